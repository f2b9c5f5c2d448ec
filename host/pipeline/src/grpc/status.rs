//! The one mapping of domain errors to gRPC statuses. Handlers return `?` on a domain
//! error and get the status its kind calls for; the message names the field, rule or
//! version and what to do.

use tonic::Status;

use crate::domain::wire::FieldError;
use crate::order_log::PublishError;
use crate::rules::gate::GateError;

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<PublishError> for Status {
    fn from(e: PublishError) -> Self {
        Status::unavailable(e.to_string())
    }
}

impl From<GateError> for Status {
    fn from(e: GateError) -> Self {
        let message = e.to_string();
        match e {
            GateError::Invalid(_) => Status::invalid_argument(message),
            GateError::Refused(_) => Status::failed_precondition(message),
            GateError::NotFound(_) => Status::not_found(message),
            GateError::Conflict => Status::aborted(message),
            GateError::Unavailable(_) => Status::unavailable(message),
            GateError::Internal(_) => Status::internal(message),
        }
    }
}

/// A result store that could not be read.
pub(crate) fn store_unavailable(e: &anyhow::Error) -> Status {
    tracing::warn!(error = %format!("{e:#}"), "result store error");
    Status::unavailable(format!("result store unavailable: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_code() {
        let cases = [
            (GateError::Invalid("x".into()), tonic::Code::InvalidArgument),
            (
                GateError::Refused("x".into()),
                tonic::Code::FailedPrecondition,
            ),
            (GateError::NotFound("x".into()), tonic::Code::NotFound),
            (GateError::Conflict, tonic::Code::Aborted),
            (
                GateError::Unavailable(anyhow::anyhow!("down")),
                tonic::Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
        let field = FieldError {
            field: "lines[0].quantity".into(),
            message: "must be at least 1".into(),
        };
        let status = Status::from(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "lines[0].quantity: must be at least 1");
    }
}

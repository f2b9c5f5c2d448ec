//! `grpc.health.v1` from the process's [`Readiness`]: SERVING while every probe passes,
//! NOT_SERVING otherwise. A NOT_SERVING answer to `Check` carries the reasons in the
//! response metadata [`REASON_HEADER`] (`order-pipeline health` prints them; the proto's
//! messages have no field for them).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::readiness::{Problems, Readiness};

/// Response metadata naming what is not ready.
pub const REASON_HEADER: &str = "order-pipeline-not-ready";

/// The health service of a server that serves `service_name`.
pub struct HealthApi {
    service_name: &'static str,
    readiness: watch::Receiver<Problems>,
}

impl HealthApi {
    /// Health for `service_name` (and the server as a whole, `""`) from `readiness`.
    pub fn server(service_name: &'static str, readiness: &Arc<Readiness>) -> HealthServer<Self> {
        HealthServer::new(Self {
            service_name,
            readiness: readiness.subscribe(),
        })
    }

    fn known(&self, service: &str) -> bool {
        service.is_empty() || service == self.service_name
    }
}

fn status(problems: &Problems) -> ServingStatus {
    if problems.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

/// The reasons as a metadata value: printable ASCII, at most 1 KiB.
fn reason_value(reason: &str) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    let printable: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(1024)
        .collect();
    printable.parse().ok()
}

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        if !self.known(&service) {
            return Err(Status::not_found(format!(
                "unknown service `{service}`; this server serves `{}`",
                self.service_name
            )));
        }
        let problems = self.readiness.borrow().clone();
        let mut response = Response::new(answer(status(&problems)));
        if !problems.is_ready()
            && let Some(value) = reason_value(&problems.reason())
        {
            response.metadata_mut().insert(REASON_HEADER, value);
        }
        Ok(response)
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        if !self.known(&service) {
            // As the protocol asks: say so, and keep the call open.
            let unknown = answer(ServingStatus::ServiceUnknown);
            let stream =
                futures::stream::once(async move { Ok(unknown) }).chain(futures::stream::pending());
            return Ok(Response::new(Box::pin(stream)));
        }
        // The current status at once, then each change of it.
        let updates = futures::stream::unfold(
            (self.readiness.clone(), None),
            |(mut readiness, last)| async move {
                loop {
                    let now = status(&readiness.borrow_and_update());
                    if last != Some(now) {
                        return Some((Ok(answer(now)), (readiness, Some(now))));
                    }
                    readiness.changed().await.ok()?;
                }
            },
        );
        Ok(Response::new(Box::pin(updates)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_become_a_printable_header() {
        let value = reason_value("redis: connexion refusée\n(os error 111)");
        assert_eq!(
            value.as_ref().and_then(|v| v.to_str().ok()),
            Some("redis: connexion refus?e?(os error 111)")
        );
    }
}

//! `order.CacheService`: serves results from the store; NOT_FOUND until a result exists,
//! optionally after waiting for it.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert::result_response;
use crate::proto::{self, cache_service_server::CacheService};
use crate::store::{MAX_WAIT, Store};

/// The CacheService.
pub struct CacheApi {
    store: Store,
}

impl CacheApi {
    /// A CacheService reading from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    #[tracing::instrument(name = "grpc.get_order_result", skip_all, fields(order_id = %request.get_ref().id))]
    async fn get_order_result(
        &self,
        request: Request<proto::ResultRequest>,
    ) -> Result<Response<proto::ResultResponse>, Status> {
        let request = request.into_inner();
        if request.id.is_empty() {
            return Err(Status::invalid_argument("id: is required"));
        }
        let max_ms = MAX_WAIT.as_millis();
        if u128::from(request.wait_ms) > max_ms {
            return Err(Status::invalid_argument(format!(
                "wait_ms: {} is more than the maximum of {max_ms}",
                request.wait_ms
            )));
        }
        let found = if request.wait_ms == 0 {
            self.store.get(&request.id).await
        } else {
            let wait = Duration::from_millis(u64::from(request.wait_ms));
            self.store.wait(&request.id, wait).await
        };
        match found {
            Ok(Some(result)) => Ok(Response::new(result_response(&result))),
            Ok(None) => Err(Status::not_found("order not found")),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "result store error");
                Err(Status::unavailable(format!(
                    "result store unavailable: {e:#}"
                )))
            }
        }
    }
}

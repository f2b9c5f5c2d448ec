//! `order.CacheService`: serves results from the store; NOT_FOUND until a result exists,
//! optionally after waiting for it.

use std::time::Duration;

use opentelemetry::KeyValue;
use tonic::{Request, Response, Status};

use super::status::store_unavailable;
use crate::domain::wire::result_response;
use crate::proto::{self, cache_service_server::CacheService};
use crate::store::{MAX_WAIT, Store};
use crate::telemetry::Trace;

/// Most ids one `GetOrderResults` call may ask for.
pub const MAX_IDS_PER_CALL: usize = 1000;
/// Most waiting one `GetOrderResults` call may ask for, as ids × `wait_ms`: each waited-for
/// id holds a waiter and re-reads the store until it is found or the wait ends. 1,000,000
/// lets 1000 ids wait 1 s, 100 ids 10 s, or 33 ids the full 30 s.
pub const MAX_ID_WAIT_MS_PER_CALL: u64 = 1_000_000;

fn check_id(field: &str, id: &str) -> Result<(), Status> {
    crate::domain::wire::check_id(field, id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn check_wait(wait_ms: u32) -> Result<Option<Duration>, Status> {
    let max_ms = MAX_WAIT.as_millis();
    if u128::from(wait_ms) > max_ms {
        return Err(Status::invalid_argument(format!(
            "wait_ms: {wait_ms} is more than the maximum of {max_ms}"
        )));
    }
    Ok((wait_ms > 0).then(|| Duration::from_millis(u64::from(wait_ms))))
}

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

impl CacheApi {
    /// `GetOrderResult` without its span.
    async fn get_one(
        &self,
        request: proto::ResultRequest,
    ) -> Result<proto::ResultResponse, Status> {
        check_id("id", &request.id)?;
        let found = match check_wait(request.wait_ms)? {
            None => self.store.get(&request.id).await,
            Some(wait) => self.store.wait(&request.id, wait).await,
        };
        match found {
            Ok(Some(result)) => Ok(result_response(&result)),
            Ok(None) => Err(Status::not_found("order not found")),
            Err(e) => Err(store_unavailable(&e)),
        }
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    #[tracing::instrument(name = "grpc.get_order_result", skip_all, fields(order_id = %request.get_ref().id))]
    async fn get_order_result(
        &self,
        request: Request<proto::ResultRequest>,
    ) -> Result<Response<proto::ResultResponse>, Status> {
        let call = Trace::server(
            "order.CacheService/GetOrderResult",
            request.metadata(),
            || vec![KeyValue::new("order.id", request.get_ref().id.clone())],
        );
        let answer = self.get_one(request.into_inner()).await;
        match &answer {
            Ok(response) => call.set(|| KeyValue::new("order.status", response.status.clone())),
            Err(status) if status.code() == tonic::Code::NotFound => {
                call.set(|| KeyValue::new("order.status", "not-found"));
            }
            Err(status) => call.fail(|| status.message().to_string()),
        }
        call.end();
        answer.map(Response::new)
    }

    #[tracing::instrument(name = "grpc.get_order_results", skip_all, fields(ids = request.get_ref().ids.len()))]
    async fn get_order_results(
        &self,
        request: Request<proto::ResultsRequest>,
    ) -> Result<Response<proto::ResultsResponse>, Status> {
        let call = Trace::server(
            "order.CacheService/GetOrderResults",
            request.metadata(),
            || vec![KeyValue::new("ids", request.get_ref().ids.len() as i64)],
        );
        let answer = self.get_many(request.into_inner()).await;
        match &answer {
            Ok(response) => call.set(|| {
                let found = response.results.iter().filter(|r| r.found).count();
                KeyValue::new("found", found as i64)
            }),
            Err(status) => call.fail(|| status.message().to_string()),
        }
        call.end();
        answer.map(Response::new)
    }
}

impl CacheApi {
    /// `GetOrderResults` without its span.
    async fn get_many(
        &self,
        request: proto::ResultsRequest,
    ) -> Result<proto::ResultsResponse, Status> {
        if request.ids.len() > MAX_IDS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "ids: {} ids, at most {MAX_IDS_PER_CALL} per call",
                request.ids.len()
            )));
        }
        for (i, id) in request.ids.iter().enumerate() {
            check_id(&format!("ids[{i}]"), id)?;
        }
        let wait = check_wait(request.wait_ms)?;
        let work = request.ids.len() as u64 * u64::from(request.wait_ms);
        if work > MAX_ID_WAIT_MS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "wait_ms: {} ids × {} ms is more than {MAX_ID_WAIT_MS_PER_CALL} id·ms per call; \
                 wait for fewer ids at once, or less long",
                request.ids.len(),
                request.wait_ms
            )));
        }
        let found = self
            .store
            .get_many(&request.ids, wait)
            .await
            .map_err(|e| store_unavailable(&e))?;
        let results = request
            .ids
            .into_iter()
            .zip(found)
            .map(|(id, result)| proto::ResultEntry {
                id,
                found: result.is_some(),
                result: result.as_ref().map(result_response),
            })
            .collect();
        Ok(proto::ResultsResponse { results })
    }
}

//! `order.OrderService`: validates each order envelope and publishes it to the order log;
//! answers `accepted` only after the log acknowledged it.

use futures::future::join_all;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::domain::wire as convert;
use crate::order_log::Publisher;
use crate::proto::{self, order_service_server::OrderService};
use crate::telemetry::Trace;

/// Most orders in one `CreateOrders` call.
pub const MAX_BATCH: usize = 10_000;

/// The OrderService.
pub struct OrderApi {
    publisher: Publisher,
}

impl OrderApi {
    /// An OrderService publishing to `publisher`.
    pub fn new(publisher: Publisher) -> Self {
        Self { publisher }
    }

    /// Validates and publishes one order, traced as a child of `call`; the error is the
    /// status to answer.
    async fn submit(&self, order: proto::OrderRequest, call: &Trace) -> Result<String, Status> {
        let counted = |outcome: &'static str| {
            metrics::counter!(crate::metrics::ORDERS, "outcome" => outcome).increment(1);
        };
        let payload = order.encode_to_vec();
        convert::validate(&order, payload.len()).inspect_err(|_| counted("invalid"))?;
        let started = std::time::Instant::now();
        let span = call.child(
            format!("publish {}", self.publisher.destination()),
            SpanKind::Producer,
            || vec![KeyValue::new("order.id", order.id.clone())],
        );
        let published = self
            .publisher
            .publish(&order.id, payload, &span.headers())
            .await
            .inspect_err(|e| {
                counted("unavailable");
                span.fail(|| e.to_string());
                tracing::warn!(order_id = %order.id, error = %e, "order not accepted");
            });
        span.end();
        published?;
        metrics::histogram!(crate::metrics::PUBLISH_SECONDS)
            .record(started.elapsed().as_secs_f64());
        counted("accepted");
        Ok(order.id)
    }
}

fn accepted(id: String) -> proto::OrderResponse {
    proto::OrderResponse {
        status: "accepted".into(),
        id,
        error: String::new(),
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(name = "grpc.create_order", skip_all, fields(order_id = %request.get_ref().id))]
    async fn create_order(
        &self,
        request: Request<proto::OrderRequest>,
    ) -> Result<Response<proto::OrderResponse>, Status> {
        let call = Trace::server("order.OrderService/CreateOrder", request.metadata(), || {
            vec![KeyValue::new("order.id", request.get_ref().id.clone())]
        });
        let submitted = self.submit(request.into_inner(), &call).await;
        if let Err(status) = &submitted {
            call.fail(|| status.message().to_string());
        }
        call.end();
        Ok(Response::new(accepted(submitted?)))
    }

    #[tracing::instrument(name = "grpc.create_orders", skip_all, fields(orders = request.get_ref().orders.len()))]
    async fn create_orders(
        &self,
        request: Request<proto::CreateOrdersRequest>,
    ) -> Result<Response<proto::CreateOrdersResponse>, Status> {
        let call = Trace::server(
            "order.OrderService/CreateOrders",
            request.metadata(),
            || {
                vec![KeyValue::new(
                    "orders",
                    request.get_ref().orders.len() as i64,
                )]
            },
        );
        let orders = request.into_inner().orders;
        if orders.len() > MAX_BATCH {
            call.fail(|| "too many orders".to_string());
            call.end();
            return Err(Status::invalid_argument(format!(
                "orders: {} orders, at most {MAX_BATCH} per call",
                orders.len()
            )));
        }
        let call = &call;
        let responses = join_all(orders.into_iter().enumerate().map(|(i, order)| async move {
            let id = order.id.clone();
            match self.submit(order, call).await {
                Ok(id) => accepted(id),
                Err(status) => proto::OrderResponse {
                    status: match status.code() {
                        tonic::Code::InvalidArgument => "invalid".into(),
                        _ => "unavailable".into(),
                    },
                    id,
                    error: format!("orders[{i}].{}", status.message()),
                },
            }
        }))
        .await;
        call.end();
        Ok(Response::new(proto::CreateOrdersResponse { responses }))
    }
}

//! Traces: one trace per order across the roles. The W3C `traceparent` travels in gRPC
//! metadata (client → OrderService, client → CacheService) and in the Kafka message
//! headers (OrderService → worker). Spans: the gRPC call (`CreateOrder`, `CreateOrders`,
//! `GetOrderResult`, `GetOrderResults`), `publish orders` per order, and in the worker
//! `process orders` per order with a child per rule evaluated (`evaluate RULE`: name,
//! version, outcome, fuel) and `store result`.
//!
//! Spans are exported with OTLP/gRPC once [`init`] ran (the binary calls it when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set). Before that, or without it, nothing is
//! recorded and every function here costs one branch: no span, no header, no clock read.
//!
//! The embedded order log has no headers: it keeps each entry's `traceparent` in memory
//! until the worker processes the entry, so `run` gives the same trace (an entry
//! appended before a restart is processed without it).

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::domain::OrderResult;

/// The tracer, once [`init`] ran.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Whether spans are recorded (and exported).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The exporter of this process; [`Telemetry::shutdown`] flushes what is left.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter. Call it outside the
    /// async runtime, which must still be running (the exporter's connection lives on it).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "traces: could not export the last spans");
        }
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter refused the endpoint.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT `{endpoint}`: {source}")]
    Exporter {
        /// What was given.
        endpoint: String,
        /// Why.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The endpoint is not an http(s) URL.
    #[error(
        "OTEL_EXPORTER_OTLP_ENDPOINT `{0}`: expected an http:// or https:// URL of an OTLP/gRPC receiver, e.g. http://127.0.0.1:4317"
    )]
    NotAUrl(String),
    /// [`init`] already ran in this process.
    #[error("tracing is already set up in this process")]
    AlreadySet,
}

/// Exports this process's spans to the OTLP/gRPC receiver at `endpoint` (batched, in the
/// background) as service `service_name`. Call it inside the tokio runtime.
pub fn init(endpoint: &str, service_name: &str) -> Result<Telemetry, TelemetryError> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(TelemetryError::NotAUrl(endpoint.to_string()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            source,
        })?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service_name.to_string())
                .build(),
        )
        .build();
    use opentelemetry::trace::TracerProvider as _;
    TRACER
        .set(provider.tracer("order-pipeline"))
        .map_err(|_| TelemetryError::AlreadySet)?;
    tracing::info!(endpoint, service_name, "traces exported with OTLP");
    Ok(Telemetry { provider })
}

/// A span in progress, with its context; nothing when tracing is off.
#[derive(Clone, Default)]
pub struct Trace(Option<Context>);

impl Trace {
    /// The server span of gRPC call `method`, a child of the caller's `traceparent` in
    /// `metadata` (a new trace without one).
    pub fn server(
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        let Some(tracer) = tracer() else {
            return Self(None);
        };
        let parent = TraceContextPropagator::new().extract(&Metadata(metadata));
        let span = tracer
            .span_builder(method)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes())
            .start_with_context(tracer, &parent);
        Self(Some(parent.with_span(span)))
    }

    /// A child span of this one.
    pub fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        let (Some(tracer), Some(parent)) = (tracer(), &self.0) else {
            return Self(None);
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(tracer, parent);
        Self(Some(parent.with_span(span)))
    }

    /// The W3C headers that carry this span to the next hop (none when off).
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers = Headers(Vec::new());
        if let Some(cx) = &self.0 {
            TraceContextPropagator::new().inject_context(cx, &mut headers);
        }
        headers.0
    }

    /// Adds an attribute.
    pub fn set(&self, attribute: impl FnOnce() -> KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(attribute());
        }
    }

    /// Marks the span failed with `message`.
    pub fn fail(&self, message: impl FnOnce() -> String) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(message()));
        }
    }

    /// Ends the span now.
    pub fn end(&self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// What the worker knows of one stored order, for its spans.
pub struct Processed<'a> {
    /// The `traceparent` header the order carried, if any.
    pub traceparent: Option<&'a str>,
    /// Where it was read from: partition and offset.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// When its batch was taken from the partition's queue.
    pub taken: SystemTime,
    /// When its (last) evaluation started.
    pub evaluated: SystemTime,
    /// Its stored result.
    pub result: &'a OrderResult,
}

/// Records the worker's spans of one order once its result is stored (`stored` is when
/// the batch's write started and ended): `process orders` from `taken` to the end of the
/// write, a child per rule in the order they ran (their durations are the engine's,
/// laid end to end from `evaluated`), and `store result`. Nothing when tracing is off.
pub fn record_processed(topic: &str, order: &Processed<'_>, stored: (SystemTime, SystemTime)) {
    let Some(tracer) = tracer() else {
        return;
    };
    let result = order.result;
    let parent = match order.traceparent {
        Some(value) => TraceContextPropagator::new().extract(&Traceparent(value)),
        None => Context::new(),
    };
    let process = tracer
        .span_builder(format!("process {topic}"))
        .with_kind(SpanKind::Consumer)
        .with_start_time(order.taken)
        .with_attributes([
            KeyValue::new("order.id", result.id.clone()),
            KeyValue::new("order.status", result.status.as_str()),
            KeyValue::new("order.attempts", i64::from(result.attempts)),
            KeyValue::new("ruleset.version", result.ruleset_version as i64),
            KeyValue::new("messaging.destination.name", topic.to_string()),
            KeyValue::new(
                "messaging.destination.partition.id",
                order.partition.to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", order.offset),
        ])
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(process);
    if !result.error.is_empty() {
        cx.span().set_status(Status::error(result.error.clone()));
    }
    let mut at = order.evaluated;
    for rule in &result.rules {
        let end = at + Duration::from_micros(rule.duration_us);
        let mut span = tracer
            .span_builder(format!("evaluate {}", rule.name))
            .with_kind(SpanKind::Internal)
            .with_start_time(at)
            .with_attributes([
                KeyValue::new("rule.name", rule.name.clone()),
                KeyValue::new("rule.version", rule.version.clone()),
                KeyValue::new("rule.digest", rule.digest.clone()),
                KeyValue::new("rule.outcome", rule.outcome.as_str()),
                KeyValue::new("rule.fuel", rule.fuel_used as i64),
            ])
            .start_with_context(tracer, &cx);
        if rule.outcome == order_rules_engine::RuleOutcome::Failed {
            span.set_status(Status::error(result.error.clone()));
        }
        span.end_with_timestamp(end);
        at = end;
    }
    let mut store = tracer
        .span_builder("store result")
        .with_kind(SpanKind::Client)
        .with_start_time(stored.0)
        .start_with_context(tracer, &cx);
    store.end_with_timestamp(stored.1);
    cx.span().end_with_timestamp(stored.1);
}

/// gRPC metadata as a propagation carrier.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// A `traceparent` value alone as a carrier (the worker reads no `tracestate`).
struct Traceparent<'a>(&'a str);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// Message headers being written.
struct Headers(Vec<(String, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_until_init() {
        // No test of this crate calls init: tracing is off and costs nothing.
        assert!(!enabled());
        let trace = Trace::server("CreateOrder", &tonic::metadata::MetadataMap::new(), || {
            panic!("attributes are not built when tracing is off")
        });
        assert!(trace.headers().is_empty());
    }

    #[test]
    fn endpoint_must_be_a_url() {
        let e = init("127.0.0.1:4317", "test").err().unwrap();
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(!enabled());
    }
}

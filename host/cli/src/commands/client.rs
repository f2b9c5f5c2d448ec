//! The clients of the pipeline's gRPC services: `submit`, `get`, `health`, and `bench`
//! (the load generator of [`loadgen`](crate::loadgen)), and their arguments.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use order_pipeline::proto;

use super::plugin::read_order;
use crate::exit::{EXIT_OK, EXIT_TEST_FAILED, Failure};
use crate::loadgen::cpu;
use crate::tls;

pub(crate) async fn submit(args: SubmitArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let request = match &args.order {
        Some(path) => order_pipeline::domain::wire::request_from_order(&read_order(path)?),
        None => proto::OrderRequest {
            id: args.id.clone().unwrap_or_default(),
            item: args.item.clone().unwrap_or_default(),
            price: args.price.unwrap_or_default(),
            currency: args.currency.clone().unwrap_or_default(),
            ..Default::default()
        },
    };
    let mut client = proto::order_service_client::OrderServiceClient::new(
        crate::tls::connect(&args.addr, &args.tls, "OrderService").await?,
    );
    let response = client
        .create_order(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    writeln!(
        out,
        "{}",
        serde_json::json!({"id": response.id, "status": response.status})
    )?;
    Ok(EXIT_OK)
}

pub(crate) async fn health(args: HealthArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = crate::tls::connect(&args.addr, &args.tls, "server").await?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    let reason = answer
        .metadata()
        .get(order_pipeline::grpc::health::REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = answer.into_inner().status();
    match reason {
        Some(reason) => writeln!(out, "{} ({reason})", status.as_str_name())?,
        None => writeln!(out, "{}", status.as_str_name())?,
    }
    Ok(if status == ServingStatus::Serving {
        EXIT_OK
    } else {
        EXIT_TEST_FAILED
    })
}

pub(crate) async fn load(args: BenchArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    use std::io::IsTerminal as _;
    if let Some(path) = &args.plot
        && path.extension().and_then(|e| e.to_str()) != Some("png")
    {
        return Err(format!(
            "--plot {}: the plot is a PNG; give a file name ending in .png",
            path.display()
        )
        .into());
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(format!("--rate {rate}: give a positive number of orders per second").into());
    }
    let cpu = cpu_targets(&args);
    let plan = crate::loadgen::BenchPlan {
        order_url: args.order_addr,
        cache_url: args.cache_addr,
        orders: args.orders.unwrap_or(match args.duration {
            Some(_) => usize::MAX,
            None => 10_000,
        }),
        concurrency: args.concurrency,
        batch: args.batch,
        rate: args.rate,
        duration: args.duration,
        cpu,
        tls: args.tls,
    };
    let total = plan.orders;
    let duration = plan.duration;
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(started);
    let report = crate::loadgen::run(&plan, move |done| {
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tty && (last.elapsed() >= std::time::Duration::from_millis(100) || done >= total) {
            *last = std::time::Instant::now();
            eprint!(
                "\r{}",
                crate::loadgen::progress_line(done, total, started.elapsed(), duration)
            );
        }
    })
    .await
    .map_err(|e| format!("{e:#}"))?;
    if tty {
        eprintln!();
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.summary()
    };
    write!(out, "{text}")?;
    if let Some(path) = &args.plot {
        crate::loadgen::plot::latency_png(path, &report, args.plot_font.as_deref())
            .map_err(|e| format!("{e:#}"))?;
        if !args.json {
            writeln!(out, "latency plot: {}", path.display())?;
        }
    }
    Ok(if report.errors == 0 {
        EXIT_OK
    } else {
        EXIT_TEST_FAILED
    })
}

/// The processes whose CPU `bench` measures: the `--pid`s, or else the local processes
/// listening on the OrderService's and CacheService's ports; then the broker's and
/// Redis's. A note on stderr when the pipeline's cannot be found.
fn cpu_targets(args: &BenchArgs) -> Vec<(cpu::Role, i32)> {
    let mut targets: Vec<(cpu::Role, i32)> = Vec::new();
    if args.pid.is_empty() {
        for url in [&args.order_addr, &args.cache_addr] {
            if let Some(pid) = cpu::listener_pid(url) {
                targets.push((cpu::Role::Pipeline, pid));
            }
        }
        if targets.is_empty() {
            eprintln!(
                "note: the pipeline's CPU is not measured: no local process listens on {}; \
                 give its PID with --pid",
                args.order_addr
            );
        }
    } else {
        targets.extend(args.pid.iter().map(|pid| (cpu::Role::Pipeline, *pid)));
    }
    targets.extend(args.broker_pid.iter().map(|pid| (cpu::Role::Broker, *pid)));
    targets.extend(args.redis_pid.iter().map(|pid| (cpu::Role::Redis, *pid)));
    targets
}

pub(crate) async fn get(args: GetArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let mut client = proto::cache_service_client::CacheServiceClient::new(
        crate::tls::connect(&args.addr, &args.tls, "CacheService").await?,
    );
    let response = client
        .get_order_result(proto::ResultRequest {
            id: args.id.clone(),
            wait_ms: args.wait_ms,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let json = serde_json::to_string_pretty(&result_json(&response))?;
    writeln!(out, "{json}")?;
    Ok(EXIT_OK)
}

/// A `ResultResponse` as JSON for people.
fn result_json(r: &proto::ResultResponse) -> serde_json::Value {
    let totals = r.totals.unwrap_or_default();
    serde_json::json!({
        "id": r.id,
        "status": r.status,
        "item": r.item,
        "price": r.price,
        "currency": r.currency,
        "totals": {
            "subtotal": totals.subtotal,
            "discounts": totals.discounts,
            "surcharges": totals.surcharges,
            "tax": totals.tax,
            "total": totals.total,
        },
        "adjustments": r.adjustments.iter().map(|a| serde_json::json!({
            "rule": a.rule, "kind": a.kind, "label": a.label, "amount": a.amount,
        })).collect::<Vec<_>>(),
        "reasons": r.reasons.iter().map(|x| serde_json::json!({
            "rule": x.rule, "code": x.code, "message": x.message,
        })).collect::<Vec<_>>(),
        "rules": r.rules.iter().map(|x| serde_json::json!({
            "name": x.name, "version": x.version, "digest": x.digest, "outcome": x.outcome,
            "fuel_used": x.fuel_used, "duration_us": x.duration_us,
        })).collect::<Vec<_>>(),
        "error": r.error,
        "attempts": r.attempts,
        "ruleset_version": r.ruleset_version,
        "processed_by": r.processed_by,
        "processed_at_unix_ms": r.processed_at_unix_ms,
    })
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(crate) addr: String,
    /// Service to ask about; empty asks about the server as a whole.
    #[arg(long, default_value = "")]
    pub(crate) service: String,
    /// TLS.
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// OrderService URL.
    #[arg(
        long,
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) order_addr: String,
    /// CacheService URL.
    #[arg(
        long,
        env = "CACHE_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub(crate) cache_addr: String,
    /// Orders to submit [default: 10000, or no limit with --duration].
    #[arg(long)]
    pub(crate) orders: Option<usize>,
    /// Stop submitting after this many seconds.
    #[arg(long, value_parser = parse_seconds)]
    pub(crate) duration: Option<std::time::Duration>,
    /// Submit at this fixed rate (orders/s over all clients) instead of as fast as
    /// possible; latencies then count from when each order was due.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Orders per CreateOrders call; 0 submits one by one with CreateOrder.
    #[arg(long, default_value_t = 0)]
    pub(crate) batch: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also draw the latency distribution (CDF and latency over time) into this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub(crate) plot: Option<PathBuf>,
    /// TrueType font of the plot's labels [default: the first of the usual system fonts].
    #[arg(long, env = "PLOT_FONT", value_name = "FONT.ttf")]
    pub(crate) plot_font: Option<PathBuf>,
    /// Measure the CPU of this pipeline process (repeat for several) [default: the local
    /// processes listening on the OrderService's and CacheService's ports].
    #[arg(long, value_name = "PID")]
    pub(crate) pid: Vec<i32>,
    /// Also measure the CPU of this Kafka broker process (repeat for several).
    #[arg(long, value_name = "PID")]
    pub(crate) broker_pid: Vec<i32>,
    /// Also measure the CPU of this Redis process (repeat for several).
    #[arg(long, value_name = "PID")]
    pub(crate) redis_pid: Vec<i32>,
    /// TLS.
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
}

fn parse_seconds(raw: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = raw
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("`{raw}` is not a number of seconds (e.g. 30 or 2.5)"))?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("`{raw}`: the duration must be more than 0 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// OrderService URL.
    #[arg(
        long,
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) addr: String,
    /// Order id.
    #[arg(long, required_unless_present = "order")]
    pub(crate) id: Option<String>,
    /// Single-item order: the item.
    #[arg(long, requires = "id")]
    pub(crate) item: Option<String>,
    /// Single-item order: the price in minor units.
    #[arg(long, requires = "id", allow_negative_numbers = true)]
    pub(crate) price: Option<i32>,
    /// Currency (ISO 4217); the server's default when not given.
    #[arg(long)]
    pub(crate) currency: Option<String>,
    /// A full order as JSON (see examples/orders/) instead of --id/--item/--price.
    #[arg(long, conflicts_with_all = ["id", "item", "price"])]
    pub(crate) order: Option<PathBuf>,
    /// TLS.
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// CacheService URL.
    #[arg(
        long,
        env = "CACHE_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub(crate) addr: String,
    /// Order id.
    #[arg(long)]
    pub(crate) id: String,
    /// Wait up to this long for the result, in ms (at most 30000).
    #[arg(long, default_value_t = 5000)]
    pub(crate) wait_ms: u32,
    /// TLS.
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
}

//! `order-pipeline bench --plot FILE.png`: the latency distribution of a run, drawn with
//! plotters: the CDF of submit and submit→readable latency on the left, every order's
//! submit→readable latency over the run on the right.
//!
//! Labels need a TrueType font; plotters is built without fontconfig, so the font is
//! read from `PLOT_FONT` or a few usual system paths (DejaVu, Liberation, ...).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::loadgen::BenchReport;

/// Fonts tried, in order, when `PLOT_FONT` is not set.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Most points drawn in the over-time panel (evenly thinned beyond that).
const MAX_POINTS: usize = 40_000;

const FONT: &str = "sans-serif";

fn font_path(chosen: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = chosen {
        return Ok(path.to_path_buf());
    }
    FONT_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "no TrueType font found for the plot's labels (looked in {}); install one \
                 (e.g. `apt-get install fonts-dejavu-core`) or set PLOT_FONT=/path/to/font.ttf",
                FONT_PATHS.join(", ")
            )
        })
}

/// Registers the font (`chosen`, or the first of [`FONT_PATHS`] found) once per process.
fn register_font(chosen: Option<&Path>) -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let path = font_path(chosen).map_err(|e| e.to_string())?;
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read the plot font {}: {e}", path.display()))?;
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| {
                format!(
                    "{} is not a TrueType font plotters can read; set PLOT_FONT to a .ttf file",
                    path.display()
                )
            })
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The CDF of `latencies` (sorted in place) as (ms, percent at or below) points.
fn cdf(latencies: &mut [f64]) -> Vec<(f64, f64)> {
    latencies.sort_by(f64::total_cmp);
    let n = latencies.len();
    let step = (n / 2_000).max(1);
    let mut points: Vec<(f64, f64)> = latencies
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == n)
        .map(|(i, l)| (*l, (i + 1) as f64 * 100.0 / n as f64))
        .collect();
    points.insert(0, (0.0, 0.0));
    points
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Draws `report`'s latency distribution into the PNG at `path`.
pub fn latency_png(path: &Path, report: &BenchReport, font: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(!report.samples.is_empty(), "the run has no samples to plot");
    register_font(font)?;
    let readable: Vec<f64> = report
        .samples
        .iter()
        .filter_map(|s| s.readable.map(ms))
        .collect();
    // The x axis ends at the p99.9 of submit→readable, so a few outliers do not squash
    // the curve; the max is in the title.
    let mut sorted = readable.clone();
    sorted.sort_by(f64::total_cmp);
    let p999 = sorted
        .get(((sorted.len() as f64 * 0.999) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(1.0);
    let x_max = (p999 * 1.1).max(0.1);

    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&title(report), (FONT, 17)).map_err(err)?;
    let (left, right) = root.split_horizontally(700);
    draw_cdf(&left, report, readable, x_max)?;
    draw_over_time(&right, report, x_max)?;
    root.present()
        .map_err(err)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The plot's title: the run and its figures.
fn title(report: &BenchReport) -> String {
    let mode = if report.batch == 0 {
        "unary CreateOrder".to_string()
    } else {
        format!("CreateOrders x{}", report.batch)
    };
    let rate = match report.target_rate {
        Some(r) => format!("fixed rate {r:.0}/s"),
        None => "max rate".into(),
    };
    format!(
        "order-pipeline bench: {} orders, {} clients, {mode}, {rate}: {:.0} readable/s; submit->readable p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        report.orders,
        report.concurrency,
        report.completed_per_sec,
        report.submit_to_readable.p50_ms,
        report.submit_to_readable.p99_ms,
        report.submit_to_readable.max_ms,
    )
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// The CDF of submit and of submit→readable latency, up to `x_max` ms.
fn draw_cdf(
    area: &Area<'_>,
    report: &BenchReport,
    mut readable: Vec<f64>,
    x_max: f64,
) -> anyhow::Result<()> {
    let mut submit: Vec<f64> = report.samples.iter().map(|s| ms(s.submit)).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("latency distribution (CDF)", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..100f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("orders at or below (%)")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    let series = [
        (
            format!(
                "submit (p50 {:.1} ms, p99 {:.1} ms)",
                report.submit.p50_ms, report.submit.p99_ms
            ),
            cdf(&mut submit),
            BLUE,
        ),
        (
            format!(
                "submit -> readable (p50 {:.1} ms, p99 {:.1} ms)",
                report.submit_to_readable.p50_ms, report.submit_to_readable.p99_ms
            ),
            cdf(&mut readable),
            RED,
        ),
    ];
    for (label, points, color) in series {
        chart
            .draw_series(LineSeries::new(
                points.into_iter().map(|(x, y)| (x.min(x_max), y)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Each order's submit→readable latency (up to `x_max` ms) by when it was submitted.
fn draw_over_time(area: &Area<'_>, report: &BenchReport, x_max: f64) -> anyhow::Result<()> {
    let seconds = report
        .samples
        .iter()
        .map(|s| s.at.as_secs_f64())
        .fold(0.0, f64::max)
        .max(0.001);
    let mut over_time = ChartBuilder::on(area)
        .caption("submit -> readable latency of each order", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..seconds * 1.02, 0f64..x_max)
        .map_err(err)?;
    over_time
        .configure_mesh()
        .x_desc("submitted at (s into the run)")
        .y_desc("latency (ms)")
        .label_style((FONT, 13))
        .draw()
        .map_err(err)?;
    let step = (report.samples.len() / MAX_POINTS).max(1);
    over_time
        .draw_series(
            report
                .samples
                .iter()
                .step_by(step)
                .filter_map(|s| Some((s.at.as_secs_f64(), ms(s.readable?).min(x_max))))
                .map(|p| Circle::new(p, 1, RED.mix(0.35).filled())),
        )
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_ends_at_one_hundred_percent_in_order() {
        let mut latencies = vec![3.0, 1.0, 2.0, 4.0];
        let points = cdf(&mut latencies);
        assert_eq!(points.first(), Some(&(0.0, 0.0)));
        assert_eq!(points.last(), Some(&(4.0, 100.0)));
        assert!(
            points
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
        );
    }

    #[test]
    fn draws_a_png_of_a_run() {
        #![allow(clippy::unwrap_used)]
        use crate::loadgen::{Percentiles, Sample};
        let p = |v: f64| Percentiles {
            p50_ms: v,
            p90_ms: v,
            p99_ms: v,
            max_ms: v,
        };
        let samples: Vec<Sample> = (0..5_000u64)
            .map(|i| Sample {
                at: Duration::from_micros(i * 200),
                submit: Duration::from_micros(500 + i % 700),
                readable: (i % 1000 != 7).then(|| Duration::from_micros(2_000 + (i * 37) % 9_000)),
            })
            .collect();
        let report = BenchReport {
            orders: samples.len(),
            concurrency: 8,
            batch: 0,
            submitted_per_sec: 5000.0,
            completed_per_sec: 4990.0,
            submit: p(0.8),
            submit_to_readable: p(6.0),
            errors: 5,
            seconds: 1.0,
            target_rate: Some(5000.0),
            cpu: crate::loadgen::cpu::CpuMeter::start(&[])
                .unwrap()
                .finish(4990)
                .unwrap(),
            samples,
        };
        let dir = std::env::temp_dir().join(format!("plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.png");
        latency_png(&path, &report, None).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // 1400 x 560, big-endian in the IHDR chunk.
        assert_eq!(&bytes[16..24], &[0, 0, 5, 120, 0, 0, 2, 48]);
        assert!(
            bytes.len() > 20_000,
            "a plot with text and points, got {} bytes",
            bytes.len()
        );
    }
}

//! The report of a throughput comparison: a CSV of every [`RunResult`] and two PNG charts, the
//! closed-loop throughput against batch size and the open-loop latency against load.
//!
//! The charts are drawn with plotters' pure-Rust bitmap backend and `ab_glyph` text rendering,
//! using Noto Sans (SIL Open Font License 1.1, shipped by the `notosans` crate) embedded in the
//! binary, so they render their text on a machine without any system font or font library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::series::DashedLineSeries;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, RGBColor};

use crate::results::RunResult;

/// Width of both charts in pixels.
pub const CHART_WIDTH: u32 = 1000;
/// Height of both charts in pixels.
pub const CHART_HEIGHT: u32 = 600;

/// Width of the legend column on the right of a chart, so the legend never covers data.
const LEGEND_WIDTH: u32 = 250;
/// The font family every text of the charts is drawn in (registered from the embedded font).
const FONT: &str = "sans-serif";

/// A failure to write one of the report's files.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The CSV file could not be created.
    #[error("cannot create CSV file {path}: {source}")]
    CsvCreate {
        /// The CSV file.
        path: PathBuf,
        /// What went wrong.
        source: csv::Error,
    },
    /// One row could not be written to the CSV file.
    #[error("cannot write row {row} (system {system}) to CSV file {path}: {source}")]
    CsvRow {
        /// The CSV file.
        path: PathBuf,
        /// Index of the row in the input slice.
        row: usize,
        /// The row's system.
        system: String,
        /// What went wrong.
        source: csv::Error,
    },
    /// The CSV file could not be flushed to disk.
    #[error("cannot flush CSV file {path}: {source}")]
    CsvFlush {
        /// The CSV file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The embedded font could not be registered with plotters.
    #[error("cannot register the embedded font {font} for the charts: not a valid font")]
    Font {
        /// Name of the embedded font.
        font: &'static str,
    },
    /// A chart could not be drawn or saved.
    #[error("cannot {step} for chart {path}: {message}")]
    Chart {
        /// The PNG file.
        path: PathBuf,
        /// The drawing step that failed.
        step: &'static str,
        /// The plotters error.
        message: String,
    },
}

/// Writes one CSV row per run, with a header of the [`RunResult`] field names. An open-loop
/// field that does not apply (`offered_tps` of a closed-loop run) is an empty cell.
pub fn write_csv(path: &Path, rows: &[RunResult]) -> Result<(), ReportError> {
    let mut writer = csv::Writer::from_path(path).map_err(|source| ReportError::CsvCreate {
        path: path.to_path_buf(),
        source,
    })?;
    for (row, result) in rows.iter().enumerate() {
        writer
            .serialize(result)
            .map_err(|source| ReportError::CsvRow {
                path: path.to_path_buf(),
                row,
                system: result.system.clone(),
                source,
            })?;
    }
    writer.flush().map_err(|source| ReportError::CsvFlush {
        path: path.to_path_buf(),
        source,
    })
}

/// Draws the closed-loop throughput chart as a PNG: committed tx/s against batch size (log2
/// axis), one line per (system, nodes) over the closed-loop rows (`offered_tps == None`).
/// Of several rows for the same (system, nodes, batch), e.g. with different client counts, the
/// highest throughput is plotted.
pub fn throughput_chart(path: &Path, rows: &[RunResult]) -> Result<(), ReportError> {
    register_fonts()?;
    let series = throughput_series(rows);
    let root = BitMapBackend::new(path, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
    let empty = series
        .is_empty()
        .then_some("No closed-loop runs in these results");
    let Some((plot_area, legend_area)) = frame(
        &root,
        path,
        "Throughput against batch size (closed loop)",
        empty,
    )?
    else {
        return root.present().map_err(chart_err(path, "save the PNG"));
    };

    let batches = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(batch, _)| batch))
        .collect::<Vec<_>>();
    let min_batch = batches.iter().copied().fold(f64::INFINITY, f64::min);
    let max_batch = batches.iter().copied().fold(0.0, f64::max);
    let max_tps = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, tps)| tps))
        .fold(0.0, f64::max);
    let y_max = if max_tps > 0.0 { max_tps * 1.12 } else { 1.0 };

    // Half a power of two of padding either side, and a labelled tick at every power of two.
    let x_range = min_batch / 2f64.sqrt()..max_batch * 2f64.sqrt();
    let x_ticks = power_of_two_ticks(min_batch, max_batch);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(
            x_range.log_scale().base(2.0).with_key_points(x_ticks),
            0.0..y_max,
        )
        .map_err(chart_err(path, "lay out the axes"))?;
    chart
        .configure_mesh()
        .x_desc("Batch size (most txs per log entry, log2 scale)")
        .y_desc("Committed tx/s")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&|batch| format!("{}", batch.round() as u64))
        .y_label_formatter(&|tps| group_thousands(*tps))
        .y_labels(10)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(chart_err(path, "draw the axes"))?;

    let mut legend = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(chart_err(path, "draw a line"))?;
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&point| Circle::new(point, 4, color.filled())),
            )
            .map_err(chart_err(path, "draw the points"))?;
        legend.push(LegendEntry {
            label: s.label.clone(),
            color,
            dashed: false,
            marker: Marker::Circle,
        });
    }
    draw_legend(&legend_area, &legend).map_err(chart_err(path, "draw the legend"))?;
    root.present().map_err(chart_err(path, "save the PNG"))
}

/// Draws the open-loop latency chart as a PNG: p50 and p99 latency (ms, log axis) against
/// achieved tx/s, over the open-loop rows (`offered_tps == Some`). Each (system, nodes) has a
/// solid p50 line and a dashed p99 line in the same color, points joined in order of offered
/// load. Without any open-loop row the chart says so.
pub fn latency_chart(path: &Path, rows: &[RunResult]) -> Result<(), ReportError> {
    register_fonts()?;
    let series = latency_series(rows);
    let root = BitMapBackend::new(path, (CHART_WIDTH, CHART_HEIGHT)).into_drawing_area();
    let empty = series
        .is_empty()
        .then_some("No open-loop runs in these results");
    let Some((plot_area, legend_area)) =
        frame(&root, path, "Latency against load (open loop)", empty)?
    else {
        return root.present().map_err(chart_err(path, "save the PNG"));
    };

    let all_points = series
        .iter()
        .flat_map(|s| s.points.iter())
        .collect::<Vec<_>>();
    let max_tps = all_points.iter().map(|p| p.tps).fold(0.0, f64::max);
    let latencies = all_points
        .iter()
        .flat_map(|p| [p.p50_ms, p.p99_ms])
        .filter(|ms| *ms > 0.0)
        .collect::<Vec<_>>();
    let min_ms = latencies.iter().copied().fold(f64::INFINITY, f64::min);
    let max_ms = latencies.iter().copied().fold(0.0, f64::max);
    let (min_ms, max_ms) = if latencies.is_empty() {
        (0.1, 10.0)
    } else {
        (min_ms, max_ms)
    };
    let y_range = min_ms / 1.6..max_ms * 1.6;
    let y_ticks = one_two_five_ticks(y_range.start, y_range.end);
    let x_max = if max_tps > 0.0 { max_tps * 1.08 } else { 1.0 };

    let mut chart = ChartBuilder::on(&plot_area)
        .margin(15)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(0.0..x_max, y_range.log_scale().with_key_points(y_ticks))
        .map_err(chart_err(path, "lay out the axes"))?;
    chart
        .configure_mesh()
        .x_desc("Achieved tx/s (committed)")
        .y_desc("Latency (ms, log scale)")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&|tps| group_thousands(*tps))
        .y_label_formatter(&|ms| format_ms(*ms))
        .x_labels(8)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(chart_err(path, "draw the axes"))?;

    let mut legend = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let color = palette(i);
        let p50 = s
            .points
            .iter()
            .filter(|p| p.p50_ms > 0.0)
            .map(|p| (p.tps, p.p50_ms))
            .collect::<Vec<_>>();
        let p99 = s
            .points
            .iter()
            .filter(|p| p.p99_ms > 0.0)
            .map(|p| (p.tps, p.p99_ms))
            .collect::<Vec<_>>();
        chart
            .draw_series(LineSeries::new(p50.iter().copied(), color.stroke_width(2)))
            .map_err(chart_err(path, "draw a p50 line"))?;
        chart
            .draw_series(
                p50.iter()
                    .map(|&point| Circle::new(point, 4, color.filled())),
            )
            .map_err(chart_err(path, "draw the p50 points"))?;
        chart
            .draw_series(DashedLineSeries::new(
                p99.iter().copied(),
                8,
                5,
                color.stroke_width(2),
            ))
            .map_err(chart_err(path, "draw a p99 line"))?;
        chart
            .draw_series(
                p99.iter()
                    .map(|&point| TriangleMarker::new(point, 5, color.stroke_width(2))),
            )
            .map_err(chart_err(path, "draw the p99 points"))?;
        legend.push(LegendEntry {
            label: format!("{} p50", s.label),
            color,
            dashed: false,
            marker: Marker::Circle,
        });
        legend.push(LegendEntry {
            label: format!("{} p99", s.label),
            color,
            dashed: true,
            marker: Marker::Triangle,
        });
    }
    draw_legend(&legend_area, &legend).map_err(chart_err(path, "draw the legend"))?;
    root.present().map_err(chart_err(path, "save the PNG"))
}

/// Registers the embedded Noto Sans with plotters, once per process, under the generic family
/// names plotters may ask for.
fn register_fonts() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        let mut ok = true;
        for family in ["sans-serif", "serif", "monospace"] {
            ok &= register_font(family, FontStyle::Normal, notosans::REGULAR_TTF).is_ok();
            ok &= register_font(family, FontStyle::Bold, notosans::BOLD_TTF).is_ok();
        }
        ok
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Font { font: "Noto Sans" })
    }
}

/// Turns a plotters error of one drawing `step` of the chart at `path` into a [`ReportError`].
fn chart_err<E: std::fmt::Display>(
    path: &Path,
    step: &'static str,
) -> impl FnOnce(E) -> ReportError {
    let path = path.to_path_buf();
    move |e| ReportError::Chart {
        path,
        step,
        message: e.to_string(),
    }
}

/// A chart's white background and title, split into the plot and the legend column; or, for
/// a chart without data, the `empty` message in place of both (and `None`).
#[allow(clippy::type_complexity)]
fn frame<'a>(
    root: &DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    path: &Path,
    title: &str,
    empty: Option<&str>,
) -> Result<
    Option<(
        DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
        DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    )>,
    ReportError,
> {
    root.fill(&WHITE)
        .map_err(chart_err(path, "fill the background"))?;
    let body = root
        .margin(8, 0, 0, 0)
        .titled(title, title_style())
        .map_err(chart_err(path, "draw the title"))?;
    if let Some(message) = empty {
        draw_no_data(&body, message).map_err(chart_err(path, "draw the no-data message"))?;
        return Ok(None);
    }
    Ok(Some(body.split_horizontally(CHART_WIDTH - LEGEND_WIDTH)))
}

fn title_style() -> TextStyle<'static> {
    // `FontDesc::style` keeps the regular glyphs: the bold face must be chosen when the font is made.
    FontDesc::new(FONT.into(), 24.0, FontStyle::Bold).into()
}

/// Writes `message` in the middle of an otherwise empty plot area.
fn draw_no_data<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    message: &str,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Rectangle::new(
        [(15, 15), (w as i32 - 15, h as i32 - 15)],
        BLACK.mix(0.3).stroke_width(1),
    ))?;
    let style = TextStyle::from((FONT, 20).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw_text(message, &style, (w as i32 / 2, h as i32 / 2))
}

#[derive(Clone, Copy)]
enum Marker {
    Circle,
    Triangle,
}

struct LegendEntry {
    label: String,
    color: RGBColor,
    dashed: bool,
    marker: Marker,
}

/// Draws the legend as a column of entries in its own area right of the plot.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    entries: &[LegendEntry],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    const ROW: i32 = 26;
    const TOP: i32 = 30;
    const LEFT: i32 = 8;
    const SAMPLE: i32 = 36;
    let text = TextStyle::from((FONT, 15).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    let (w, _) = area.dim_in_pixel();
    area.draw(&Rectangle::new(
        [
            (LEFT - 6, TOP - ROW / 2 - 4),
            (w as i32 - 8, TOP + ROW * entries.len() as i32 - ROW / 2 + 4),
        ],
        BLACK.mix(0.25).stroke_width(1),
    ))?;
    for (i, entry) in entries.iter().enumerate() {
        let y = TOP + ROW * i as i32;
        let style = entry.color.stroke_width(2);
        if entry.dashed {
            let mut x = LEFT;
            while x < LEFT + SAMPLE {
                let end = (x + 8).min(LEFT + SAMPLE);
                area.draw(&PathElement::new(vec![(x, y), (end, y)], style))?;
                x += 13;
            }
        } else {
            area.draw(&PathElement::new(
                vec![(LEFT, y), (LEFT + SAMPLE, y)],
                style,
            ))?;
        }
        let centre = (LEFT + SAMPLE / 2, y);
        match entry.marker {
            Marker::Circle => area.draw(&Circle::new(centre, 4, entry.color.filled()))?,
            Marker::Triangle => area.draw(&TriangleMarker::new(centre, 5, style))?,
        }
        area.draw_text(&entry.label, &text, (LEFT + SAMPLE + 8, y))?;
    }
    Ok(())
}

/// One line of the throughput chart: (batch, best tps) points in batch order.
struct ThroughputSeries {
    label: String,
    points: Vec<(f64, f64)>,
}

fn series_label(system: &str, nodes: usize) -> String {
    format!("{system}, {nodes} nodes")
}

fn throughput_series(rows: &[RunResult]) -> Vec<ThroughputSeries> {
    let mut best: BTreeMap<(&str, usize), BTreeMap<u32, f64>> = BTreeMap::new();
    for row in rows {
        if row.offered_tps.is_some() || row.batch == 0 || !row.tps.is_finite() {
            continue;
        }
        let tps = best
            .entry((row.system.as_str(), row.nodes))
            .or_default()
            .entry(row.batch)
            .or_insert(row.tps);
        *tps = tps.max(row.tps);
    }
    best.into_iter()
        .map(|((system, nodes), by_batch)| ThroughputSeries {
            label: series_label(system, nodes),
            points: by_batch
                .into_iter()
                .map(|(batch, tps)| (f64::from(batch), tps))
                .collect(),
        })
        .collect()
}

/// One open-loop point: the latency percentiles at one offered load.
struct LatencyPoint {
    offered: f64,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The p50 and p99 lines of one (system, nodes[, batch]) of the latency chart.
struct LatencySeries {
    label: String,
    points: Vec<LatencyPoint>,
}

fn latency_series(rows: &[RunResult]) -> Vec<LatencySeries> {
    type Key<'a> = (&'a str, usize, u32);
    let mut groups: BTreeMap<Key, Vec<LatencyPoint>> = BTreeMap::new();
    for row in rows {
        let Some(offered) = row.offered_tps else {
            continue;
        };
        if !(row.tps.is_finite() && row.p50_ms.is_finite() && row.p99_ms.is_finite()) {
            continue;
        }
        groups
            .entry((row.system.as_str(), row.nodes, row.batch))
            .or_default()
            .push(LatencyPoint {
                offered,
                tps: row.tps,
                p50_ms: row.p50_ms,
                p99_ms: row.p99_ms,
            });
    }
    // Name the batch size only where one (system, nodes) was run open-loop at several.
    let mut batches_per_system: BTreeMap<(&str, usize), usize> = BTreeMap::new();
    for (system, nodes, _) in groups.keys() {
        *batches_per_system.entry((system, *nodes)).or_default() += 1;
    }
    groups
        .into_iter()
        .map(|((system, nodes, batch), mut points)| {
            points.sort_by(|a, b| a.offered.total_cmp(&b.offered));
            let mut label = series_label(system, nodes);
            if batches_per_system[&(system, nodes)] > 1 {
                label.push_str(&format!(", batch {batch}"));
            }
            LatencySeries { label, points }
        })
        .collect()
}

/// Distinct, colour-blind friendly line colours (Okabe-Ito, then a few more).
fn palette(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(230, 159, 0),
        RGBColor(86, 180, 233),
        RGBColor(120, 120, 120),
        RGBColor(0, 0, 0),
    ];
    COLORS[i % COLORS.len()]
}

/// The powers of two from `min` to `max` (inclusive), thinned to at most about a dozen.
fn power_of_two_ticks(min: f64, max: f64) -> Vec<f64> {
    let lo = min.log2().ceil() as i32;
    let hi = max.log2().floor() as i32;
    let step = ((hi - lo) / 12 + 1).max(1) as usize;
    (lo..=hi).step_by(step).map(|e| 2f64.powi(e)).collect()
}

/// The 1-2-5 values between `min` and `max`, or only the powers of ten when that range spans
/// many decades.
fn one_two_five_ticks(min: f64, max: f64) -> Vec<f64> {
    let decades = (max / min).log10();
    let mantissas: &[f64] = if decades > 4.0 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let mut ticks = Vec::new();
    let mut exp = min.log10().floor() as i32;
    while 10f64.powi(exp) <= max {
        for m in mantissas {
            let v = m * 10f64.powi(exp);
            if v >= min && v <= max {
                ticks.push(v);
            }
        }
        exp += 1;
    }
    ticks
}

/// `12345.6` as `12,346`.
fn group_thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A latency tick label: whole milliseconds from 1 ms up, else as many decimals as needed.
fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        group_thousands(ms)
    } else {
        let s = format!("{ms:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEMS: [&str; 2] = ["raft-bft/local", "openraft"];

    fn run(system: &str, batch: u32, clients: usize, offered: Option<f64>, tps: f64) -> RunResult {
        RunResult {
            system: system.to_string(),
            nodes: 4,
            batch,
            clients,
            offered_tps: offered,
            op_bytes: 64,
            seconds: 10.0,
            committed: (tps * 10.0) as u64,
            failed: 0,
            tps,
            txs_per_entry: Some(64.0),
            p50_ms: 2.0 + 4000.0 / tps,
            p99_ms: 6.0 + 20000.0 / tps,
            p999_ms: 10.0 + 40000.0 / tps,
            leader_cpu_us_per_tx: 30.0,
            follower_cpu_us_per_tx: 25.0,
            verifying_replicas: if system == "openraft" { 1 } else { 4 },
            ceiling_tps: 50_000.0,
            ceiling_fraction: tps / 50_000.0,
        }
    }

    /// Closed-loop rows for 2 systems x 4 batch sizes (and a second, slower client count for
    /// one point), open-loop rows for 2 systems x 4 loads.
    fn sample_rows() -> Vec<RunResult> {
        let mut rows = Vec::new();
        for (s, system) in SYSTEMS.iter().enumerate() {
            let speed = if s == 0 { 1.0 } else { 2.5 };
            for batch in [1, 16, 128, 1024] {
                let tps = speed * 900.0 * f64::from(batch).sqrt();
                rows.push(run(system, batch, 64, None, tps));
            }
            rows.push(run(system, 16, 8, None, 10.0));
            for offered in [1_000.0, 4_000.0, 8_000.0, 16_000.0] {
                let tps = offered * if s == 0 { 0.9 } else { 0.99 };
                let mut row = run(system, 128, 256, Some(offered), tps);
                row.p50_ms = 1.5 + offered / (2_000.0 * speed);
                row.p99_ms = 4.0 + offered / (200.0 * speed);
                rows.push(row);
            }
        }
        rows
    }

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{path:?} is no PNG"
        );
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info.width, info.height)
    }

    #[test]
    fn csv_has_a_header_and_one_row_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let rows = sample_rows();
        write_csv(&path, &rows).unwrap();

        let mut reader = csv::Reader::from_path(&path).unwrap();
        let headers = reader.headers().unwrap().clone();
        assert_eq!(headers.get(0), Some("system"));
        assert_eq!(headers.len(), 19);
        let offered = headers.iter().position(|h| h == "offered_tps").unwrap();
        let records = reader.records().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(records.len(), rows.len());
        for (record, row) in records.iter().zip(&rows) {
            assert_eq!(&record[0], row.system);
            match row.offered_tps {
                None => assert_eq!(&record[offered], ""),
                Some(tps) => assert_eq!(record[offered].parse::<f64>().unwrap(), tps),
            }
        }
    }

    #[test]
    fn csv_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("results.csv");
        let err = write_csv(&path, &sample_rows()).unwrap_err();
        assert!(matches!(err, ReportError::CsvCreate { .. }));
        assert!(err.to_string().contains("results.csv"), "{err}");
    }

    #[test]
    fn charts_are_pngs_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample_rows();
        let throughput = dir.path().join("throughput.png");
        let latency = dir.path().join("latency.png");
        throughput_chart(&throughput, &rows).unwrap();
        latency_chart(&latency, &rows).unwrap();
        assert_eq!(png_size(&throughput), (CHART_WIDTH, CHART_HEIGHT));
        assert_eq!(png_size(&latency), (CHART_WIDTH, CHART_HEIGHT));

        // Scratch copies to look at: REPORT_SAMPLE_DIR=/tmp/report-check cargo test ...
        if let Some(out) = std::env::var_os("REPORT_SAMPLE_DIR") {
            let out = PathBuf::from(out);
            std::fs::create_dir_all(&out).unwrap();
            std::fs::copy(&throughput, out.join("throughput.png")).unwrap();
            std::fs::copy(&latency, out.join("latency.png")).unwrap();
            write_csv(&out.join("results.csv"), &rows).unwrap();
            latency_chart(&out.join("latency-empty.png"), &rows[..4]).unwrap();
        }
    }

    #[test]
    fn charts_without_rows_still_render_and_differ() {
        let dir = tempfile::tempdir().unwrap();
        let rows = sample_rows();
        for (name, chart) in [
            (
                "throughput",
                throughput_chart as fn(&Path, &[RunResult]) -> _,
            ),
            ("latency", latency_chart),
        ] {
            let full = dir.path().join(format!("{name}.png"));
            let empty = dir.path().join(format!("{name}-empty.png"));
            chart(&full, &rows).unwrap();
            chart(&empty, &[]).unwrap();
            assert_eq!(png_size(&empty), (CHART_WIDTH, CHART_HEIGHT));
            assert_ne!(
                std::fs::read(&full).unwrap(),
                std::fs::read(&empty).unwrap(),
                "{name}: the chart with rows looks like the empty one"
            );
        }
    }

    #[test]
    fn text_is_rendered_with_the_embedded_font() {
        // Two empty charts differ only in their title and message text: if no glyph were
        // drawn, their pixels would be identical.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        let b = dir.path().join("b.png");
        throughput_chart(&a, &[]).unwrap();
        latency_chart(&b, &[]).unwrap();
        assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    }

    #[test]
    fn throughput_series_keep_the_best_run_per_batch() {
        let series = throughput_series(&sample_rows());
        assert_eq!(series.len(), 2);
        for s in &series {
            let batches = s.points.iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(batches, [1.0, 16.0, 128.0, 1024.0]);
            assert!(s.points[1].1 > 10.0, "the slow 8-client run was plotted");
        }
    }

    #[test]
    fn latency_series_are_in_order_of_offered_load() {
        let mut rows = sample_rows();
        rows.reverse();
        let series = latency_series(&rows);
        assert_eq!(series.len(), 2);
        for s in &series {
            let offered = s.points.iter().map(|p| p.offered).collect::<Vec<_>>();
            assert_eq!(offered, [1_000.0, 4_000.0, 8_000.0, 16_000.0]);
            assert!(!s.label.contains("batch"), "{}", s.label);
        }
    }

    #[test]
    fn tick_helpers() {
        assert_eq!(
            power_of_two_ticks(1.0, 1024.0),
            (0..=10).map(|e| 2f64.powi(e)).collect::<Vec<_>>()
        );
        assert_eq!(
            one_two_five_ticks(0.8, 60.0),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
        );
        assert_eq!(group_thousands(1234567.4), "1,234,567");
        assert_eq!(group_thousands(999.0), "999");
        assert_eq!(format_ms(0.25), "0.25");
        assert_eq!(format_ms(20.0), "20");
    }
}

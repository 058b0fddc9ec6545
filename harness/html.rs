//! `--html FILE`: a run as one self-contained page for people: per report
//! (one per kernel) a chart like the study's figure (each case's median
//! throughput as a bar, its 95 % interval as a whisker, the baseline's cases
//! in grey), the table of cases with their ratios and verdicts, links to the
//! artifacts, and the comparison of kernels when there is one; a study's page
//! has one chart of all its labs' cases instead, with a forest plot of its
//! ratios (each case over the baseline, each claim's with its bound) and its
//! findings; a merged study's page (`vlab merge --html`) has a forest plot
//! per kernel, each block's rows and the pooled one. The charts are
//! SVG drawn with plotters; the page loads nothing from anywhere (its
//! Content-Security-Policy forbids it) and reads without network access.

use std::path::Path;

use plotters::prelude::*;

use crate::compare::Comparison;
use crate::findings::{per_kernel, StudyOutcome, Verdict};
use crate::report::Report;
use crate::stats::Change;

/// One bar of the chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// The case.
    pub label: String,
    /// Median throughput, bit/s.
    pub median: f64,
    /// The whisker: the 95 % interval, else min and max, else the median.
    pub low: f64,
    pub high: f64,
    /// A case of the reference overlay (`baseline`).
    pub baseline: bool,
}

/// The fill of a case's bar and of a baseline case's bar.
pub const BAR_FILL: RGBColor = RGBColor(70, 130, 180);
pub const BASELINE_FILL: RGBColor = RGBColor(160, 160, 160);

/// The bars of a report's cases.
pub fn bars(report: &Report) -> Vec<Bar> {
    report
        .cases
        .iter()
        .map(|c| {
            let (low, high) = match &c.throughput {
                Some(s) => s.interval.map_or((s.min, s.max), |i| (i.low, i.high)),
                None => (c.throughput_bps, c.throughput_bps),
            };
            let overlay = c.params.overlay.as_deref().unwrap_or(&report.overlay);
            Bar {
                label: c.name.clone(),
                median: c.throughput_bps,
                low,
                high,
                baseline: overlay == crate::overlay::REFERENCE,
            }
        })
        .collect()
}

/// The chart of `bars` as SVG: bars numbered from 1 (the table below the
/// chart names them), Gbit/s on the y axis.
pub fn chart(title: &str, bars: &[Bar]) -> Result<String, String> {
    let mut svg = String::new();
    {
        let width = (120 + 70 * bars.len() as u32).max(480);
        let root = SVGBackend::with_string(&mut svg, (width, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let top = bars.iter().map(|b| b.high.max(b.median)).fold(0.0, f64::max) / 1e9 * 1.15;
        let n = bars.len() as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((1u32..n).into_segmented(), 0f64..top.max(0.01))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("Gbit/s")
            .x_desc("case")
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => i.to_string(),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| e.to_string())?;
        let gbit = |b: f64| b / 1e9;
        for (baseline, fill) in [(true, BASELINE_FILL), (false, BAR_FILL)] {
            let data = bars.iter().enumerate().filter(|(_, b)| b.baseline == baseline);
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(fill.filled())
                        .margin(12)
                        .data(data.map(|(i, b)| (i as u32 + 1, gbit(b.median)))),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let x = SegmentValue::CenterOf(i as u32 + 1);
                ErrorBar::new_vertical(x, gbit(b.low), gbit(b.median), gbit(b.high), BLACK.stroke_width(2), 10)
            }))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// One method's ratio to no filter at each rule count (the rules axis).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The method: its filter, overlay and other variant axes.
    pub label: String,
    /// (rules, ratio, whisker low, whisker high), by rule count.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// What a cost chart shows of a case: a ratio and its interval.
type RatioOf = fn(&crate::report::CaseReport) -> (Option<f64>, Option<&crate::stats::Summary>);

/// The new-connection latency's ratio to no filter.
pub fn connect_ratio(c: &crate::report::CaseReport) -> (Option<f64>, Option<&crate::stats::Summary>) {
    (c.connect_vs_no_filter, c.connect_vs_no_filter_summary.as_ref())
}

/// The throughput's ratio to no filter.
pub fn throughput_ratio(c: &crate::report::CaseReport) -> (Option<f64>, Option<&crate::stats::Summary>) {
    (c.vs_no_filter, c.vs_no_filter_summary.as_ref())
}

/// How long the case's rules took to be put in place, seconds (the
/// repetitions' geometric mean, as its interval).
pub fn ruleset_seconds(c: &crate::report::CaseReport) -> (Option<f64>, Option<&crate::stats::Summary>) {
    (c.ruleset_summary.as_ref().map(|s| s.mean).or(c.ruleset_s), c.ruleset_summary.as_ref())
}

/// The series of a report whose matrix has a rules axis: one per method
/// (the cases that differ only in their rule count), `ratio` of each.
pub fn cost_series(report: &Report, ratio: RatioOf) -> Vec<Series> {
    let axis = crate::filter::policy_file::RULES_AXIS;
    let mut out: Vec<Series> = Vec::new();
    for c in &report.cases {
        let (Some(rules), (Some(r), summary)) = (crate::filter::policy_file::rules_of(&c.params), ratio(c)) else {
            continue;
        };
        let rest: Vec<&str> = c.name.split(',').filter(|p| !p.starts_with(&format!("{axis}="))).collect();
        let label = rest.join(",");
        let (low, high) = summary.and_then(|s| s.interval).map_or((r, r), |i| (i.low, i.high));
        let point = (f64::from(rules), r, low, high);
        match out.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => out.push(Series { label, points: vec![point] }),
        }
    }
    for s in &mut out {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// The cost chart as SVG: each series a line over the rule count (log
/// axis), its whiskers the 95 % intervals, a grey line at `reference` (for
/// ratios 1: no cost).
pub fn cost_chart(title: &str, y_desc: &str, series: &[Series], reference: Option<f64>) -> Result<String, String> {
    let points = series.iter().flat_map(|s| &s.points);
    let (lo, hi) = points.clone().fold((f64::MAX, 0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let top = points.clone().map(|p| p.3.max(p.1)).fold(reference.unwrap_or(0.0), f64::max) * 1.15;
    if series.is_empty() || lo > hi {
        return Err("no ratio to plot".into());
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((lo / 2.0..hi * 2.0).log_scale(), 0f64..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("rules (log scale)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| e.to_string())?;
        if let Some(y) = reference {
            chart
                .draw_series(LineSeries::new([(lo / 2.0, y), (hi * 2.0, y)], BLACK.mix(0.4).stroke_width(1)))
                .map_err(|e| e.to_string())?;
        }
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.iter().map(|p| (p.0, p.1)), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
            chart
                .draw_series(
                    s.points.iter().map(|p| ErrorBar::new_vertical(p.0, p.2, p.1, p.3, color.stroke_width(1), 8)),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The cost charts of a report with a rules axis (nothing without one).
fn cost_figures(r: &Report) -> String {
    let mut s = String::new();
    for (what, ratio, y, reference) in [
        ("new-connection latency over no filter", connect_ratio as RatioOf, "ratio to no filter", Some(1.0)),
        ("throughput over no filter", throughput_ratio as RatioOf, "ratio to no filter", Some(1.0)),
        ("the rules put in place", ruleset_seconds as RatioOf, "seconds", None),
    ] {
        let series = cost_series(r, ratio);
        if series.is_empty() {
            continue;
        }
        match cost_chart(&format!("{}: {what}", r.lab), y, &series, reference) {
            Ok(svg) => s.push_str(&format!("<figure class=\"chart\">{svg}</figure>\n")),
            Err(e) => s.push_str(&format!("<p>no chart: {}</p>\n", escape(&e))),
        }
    }
    s
}

/// A chart in its figure, or why there is none.
fn figure(title: &str, bars: &[Bar]) -> String {
    match chart(title, bars) {
        Ok(svg) => format!("<figure class=\"chart\">{svg}</figure>\n"),
        Err(e) => format!("<p>no chart: {}</p>\n", escape(&e)),
    }
}

/// A study's chart (a bar per case of every lab, numbered as in the table
/// under it), each case against the baseline, and the findings.
fn study_section(outcome: &StudyOutcome, reports: &[&Report]) -> String {
    let mut bars_all = Vec::new();
    let mut rows = String::new();
    for r in reports {
        for (c, mut bar) in r.cases.iter().zip(bars(r)) {
            bar.baseline = r.lab == outcome.baseline;
            bar.label = format!("{}/{}", r.lab, c.name);
            let ratio = outcome.ratio_text(&r.lab, &c.name);
            rows.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
                bars_all.len() + 1,
                escape(&bar.label),
                escape(&c.throughput_text()),
                escape(&ratio)
            ));
            bars_all.push(bar);
        }
    }
    let mut s = format!(
        "<h2>study <code>{}</code>, kernel {}</h2>\n<p>{}; bars are medians, whiskers 95 % intervals; \
         grey: the baseline lab <code>{}</code>. Ratios are each case over the baseline's case with as many \
         streams, paired by round.</p>\n",
        escape(&outcome.study),
        escape(&outcome.kernel),
        if outcome.repeat == 1 { "one round".to_string() } else { format!("{} rounds", outcome.repeat) },
        escape(&outcome.baseline)
    );
    s.push_str(&figure(&format!("{} (kernel {})", outcome.study, outcome.kernel), &bars_all));
    s.push_str("<table>\n<tr><th>#</th><th>case</th><th>throughput</th><th>over the baseline</th></tr>\n");
    s.push_str(&rows);
    s.push_str("</table>\n");
    s.push_str(&forest_figure(
        &format!("{} (kernel {}): each case over the baseline, and the claims' ratios", outcome.study, outcome.kernel),
        &study_forest(outcome),
    ));
    s.push_str(&findings_table(&outcome.findings, "Findings"));
    s
}

/// A study's findings as a table under `heading` (nothing without any).
fn findings_table(findings: &[crate::findings::FindingOutcome], heading: &str) -> String {
    if findings.is_empty() {
        return String::new();
    }
    let mut s = format!("<h3>{heading}</h3>\n<table>\n<tr><th>claim</th><th>verdict</th><th>evidence</th></tr>\n");
    for f in findings {
        let verdict = match f.verdict {
            Verdict::DoesNotHold => format!("<b>{}</b>", f.verdict.describe()),
            v => v.describe().to_string(),
        };
        let evidence: Vec<String> = f.evidence.iter().map(|l| escape(l)).collect();
        s.push_str(&format!(
            "<tr><td>{}</td><td>{verdict}</td><td>{}</td></tr>\n",
            escape(&f.finding.claim),
            evidence.join("<br>")
        ));
    }
    s.push_str("</table>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page: every report (one per kernel), the comparisons of kernels, and
/// links into `artifacts` (relative to the page's directory when inside it).
/// `title` heads it (a study's name, else the lab's).
///
/// A study's page opens, per kernel, with one chart of every case of every
/// lab (the baseline lab's in grey), its cases set against the baseline and
/// its findings; the labs' tables follow, without charts of their own.
pub fn page(
    title: &str,
    reports: &[Report],
    comparisons: &[Comparison],
    studies: &[StudyOutcome],
    artifacts: Option<&Path>,
    page_dir: &Path,
) -> String {
    let mut body = String::new();
    for (outcome, own) in studies.iter().zip(per_kernel(reports, studies.len())) {
        body.push_str(&study_section(outcome, &own));
    }
    for (n, r) in reports.iter().enumerate() {
        let passed = r.cases.iter().filter(|c| c.passed).count();
        body.push_str(&format!(
            "<h2>lab <code>{}</code>, kernel {}</h2>\n<p>{} of {} cases passed; QEMU {}, accel {}{}; {:.0} s.</p>\n",
            escape(&r.lab),
            escape(&r.kernel),
            passed,
            r.cases.len(),
            escape(&r.qemu),
            escape(&r.accel_text()),
            if r.repeat > 1 {
                format!(", {} repetitions: bars are medians, whiskers 95 % intervals", r.repeat)
            } else {
                String::new()
            },
            r.wall_s
        ));
        if studies.is_empty() {
            body.push_str(&figure(&format!("{} (kernel {})", r.lab, r.kernel), &bars(r)));
        }
        body.push_str(&cost_figures(r));
        let columns: Vec<_> = crate::report::OPTIONAL_COLUMNS
            .into_iter()
            .filter(|(_, f)| r.cases.iter().any(|c| f(c).is_some()))
            .collect();
        let heads: String = columns.iter().map(|(h, _)| format!("<th>{h}</th>")).collect();
        body.push_str(&format!(
            "<table>\n<tr><th>#</th><th>case</th><th>throughput</th>{heads}<th>result</th><th>evidence</th></tr>\n"
        ));
        for (i, c) in r.cases.iter().enumerate() {
            let failed: Vec<String> = c.failed_checks().into_iter().map(escape).collect();
            let unjudged: Vec<String> = c.unjudged_checks().into_iter().map(escape).collect();
            let result = match (c.passed, unjudged.is_empty()) {
                (false, _) => format!("<b>FAIL</b>: {}", failed.join(", ")),
                (true, true) => "pass".to_string(),
                (true, false) => format!("pass, not judged: {}", unjudged.join(", ")),
            };
            let evidence = artifacts.map_or(String::new(), |dir| {
                let dir = crate::report::report_evidence(dir, reports, n).join(&c.name);
                let href = dir.strip_prefix(page_dir).unwrap_or(&dir).display().to_string();
                format!("<a href=\"{}\">artifacts</a>", escape(&href))
            });
            let cells: String = columns
                .iter()
                .map(|(_, f)| format!("<td>{}</td>", escape(&f(c).unwrap_or_else(|| "-".into()))))
                .collect();
            body.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td>{cells}<td>{result}</td><td>{evidence}</td></tr>\n",
                i + 1,
                escape(&c.name),
                escape(&c.throughput_text())
            ));
        }
        body.push_str("</table>\n");
        // The variants' own tables (ILA verdicts, probe matrices), as printed.
        for summary in &r.summaries {
            body.push_str(&format!("<pre>{}</pre>\n", escape(summary.trim_matches('\n'))));
        }
    }
    for c in comparisons {
        body.push_str(&format!("<h2>{} against {}</h2>\n<table>\n", escape(&c.b), escape(&c.a)));
        body.push_str("<tr><th>case</th><th>ratio</th><th>95 % interval</th><th>verdict</th></tr>\n");
        for case in &c.cases {
            let interval = case.interval.map_or("-".to_string(), |i| format!("{:.2}-{:.2}", i.low, i.high));
            let verdict = match case.change {
                Change::Slower => format!("<b>{}</b>", Change::Slower.describe()),
                other => other.describe().to_string(),
            };
            body.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{:.2}x</td><td>{interval}</td><td>{verdict}</td></tr>\n",
                escape(&case.name),
                case.ratio
            ));
        }
        body.push_str("</table>\n");
    }
    for f in crate::presence::by_kernel(reports) {
        body.push_str(&findings_by_kernel(&f));
    }
    body.push_str(
        "<p>Receiver throughput as iperf3 measured it in the guests. Compare variants within one run, never \
         figures across machines or days.</p>\n",
    );
    wrap(&format!("vlab: {title}"), &body)
}

/// A self-contained page: `body` under `title`.
fn wrap(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <title>{}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; }}\n\
         table {{ border-collapse: collapse; margin: 1em 0; }}\n\
         td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}\n\
         figure.chart {{ margin: 1em 0; }}\n\
         figure.chart svg {{ max-width: 100%; height: auto; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n{body}</body>\n</html>\n",
        escape(title),
        escape(title),
    )
}

/// A lab's findings across kernels: per check the kernels that show it,
/// and each case's verdict on each kernel.
fn findings_by_kernel(f: &crate::presence::KernelFindings) -> String {
    let mut s = format!("<h2>findings by kernel: lab <code>{}</code></h2>\n", escape(&f.lab));
    if f.findings.is_empty() {
        s.push_str(&format!("<p>No check failed on any kernel ({}).</p>\n", escape(&f.kernels.join(", "))));
        return s;
    }
    s.push_str(&format!("<p>{}.</p>\n", escape(&f.headline())));
    let heads: String = f.kernels.iter().map(|k| format!("<th>{}</th>", escape(k))).collect();
    for p in &f.checks {
        s.push_str(&format!(
            "<p><b>{}</b>: {}</p>\n<table>\n<tr><th>case</th>{heads}</tr>\n",
            escape(&p.check),
            escape(&p.line(&f.kernels))
        ));
        for row in f.findings.iter().filter(|r| r.check == p.check) {
            let cells: String = row
                .verdicts
                .iter()
                .map(|v| match v {
                    crate::presence::Verdict::Failed => "<td><b>FAIL</b></td>".to_string(),
                    other => format!("<td>{}</td>", other.word()),
                })
                .collect();
            let mark = if row.differs() { " *" } else { "" };
            s.push_str(&format!("<tr><td><code>{}</code>{mark}</td>{cells}</tr>\n", escape(&row.case)));
        }
        s.push_str("</table>\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, median: f64, interval: (f64, f64), baseline: bool) -> Bar {
        Bar { label: label.into(), median, low: interval.0, high: interval.1, baseline }
    }

    /// One bar per case in its colour (the baseline's grey), one whisker each.
    #[test]
    fn the_chart_has_a_bar_and_a_whisker_per_case() {
        let bars = [
            bar("overlay=baseline", 2.0e9, (1.8e9, 2.3e9), true),
            bar("overlay=vxlan", 0.4e9, (0.3e9, 0.5e9), false),
            bar("overlay=swarm", 0.3e9, (0.25e9, 0.35e9), false),
        ];
        let svg = chart("overlays", &bars).unwrap();
        let fill = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        assert_eq!(svg.matches(&fill(BAR_FILL)).count(), 2, "{svg}");
        assert_eq!(svg.matches(&fill(BASELINE_FILL)).count(), 1, "{svg}");
        // A whisker is a vertical line and two caps, in black, 2 px wide.
        assert!(svg.matches("stroke-width=\"2\"").count() >= 3 * bars.len(), "{svg}");
        assert!(svg.contains("Gbit/s"));
    }

    /// A line per method over the rule count on a log axis, a whisker per
    /// point, the legend naming each.
    #[test]
    fn the_cost_chart_has_a_line_per_method() {
        let series = [
            Series { label: "filter=iptables".into(), points: vec![(10.0, 1.1, 1.0, 1.2), (10000.0, 3.0, 2.5, 3.6)] },
            Series { label: "filter=nftables".into(), points: vec![(10.0, 1.0, 0.9, 1.1), (10000.0, 1.1, 1.0, 1.2)] },
        ];
        let svg = cost_chart("cost", "ratio to no filter", &series, Some(1.0)).unwrap();
        assert!(svg.contains("filter=iptables") && svg.contains("filter=nftables"), "{svg}");
        let label = |t: &str| svg.lines().any(|l| l.trim() == t);
        assert!(label("rules (log scale)") && label("10") && label("100") && label("1000"), "a log axis: {svg}");
        assert!(svg.matches("<polyline").count() >= 3, "two lines and the line at 1: {svg}");
        let seconds = cost_chart("deploy", "seconds", &series, None).unwrap();
        assert_eq!(seconds.matches("<polyline").count() + 1, svg.matches("<polyline").count(), "no line at 1");
        assert!(cost_chart("cost", "ratio", &[], Some(1.0)).is_err());
    }
}

/// A row of a forest plot: a ratio and its interval on a log axis.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestRow {
    pub label: String,
    pub mean: f64,
    /// The 95 % interval (the mean where there is none).
    pub low: f64,
    pub high: f64,
    /// A claim's bound, drawn on the row.
    pub bound: Option<f64>,
    /// A block's row, above its pooled one (drawn lighter).
    pub block: bool,
}

impl ForestRow {
    fn new(
        label: String,
        mean: f64,
        interval: Option<crate::stats::Interval>,
        bound: Option<f64>,
        block: bool,
    ) -> Self {
        let (low, high) = interval.map_or((mean, mean), |i| (i.low, i.high));
        ForestRow { label, mean, low, high, bound, block }
    }
}

/// The colour of a claim's bound in a forest plot.
pub const BOUND: RGBColor = RGBColor(200, 40, 40);

/// A forest plot as SVG: a row per ratio (named on the left, first at the
/// top), the mean a mark and the 95 % interval a line on a log axis, 1.0 a
/// dashed line, each claim's bound a red tick on its row.
pub fn forest(title: &str, rows: &[ForestRow]) -> Result<String, String> {
    let rows: Vec<&ForestRow> = rows.iter().filter(|r| r.mean.is_finite() && r.mean > 0.0).collect();
    if rows.is_empty() {
        return Err("no ratio to draw".into());
    }
    let mut svg = String::new();
    {
        let n = rows.len() as i32;
        let label_px = rows.iter().map(|r| r.label.chars().count()).max().unwrap_or(4) as u32 * 7 + 16;
        let (width, height) = (label_px.min(640) + 520, 90 + 22 * n as u32);
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let values = rows.iter().flat_map(|r| [r.low, r.high].into_iter().chain(r.bound)).chain([1.0]);
        let (lo, hi) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = (lo / 1.2, hi * 1.2);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(label_px.min(640))
            .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())
            .map_err(|e| e.to_string())?;
        let label = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) if (0..n).contains(i) => rows[(n - 1 - i) as usize].label.clone(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len())
            .y_label_formatter(&label)
            .x_labels(8)
            .x_label_formatter(&|v| {
                let text = format!("{v:.2}");
                text.trim_end_matches('0').trim_end_matches('.').to_string()
            })
            .x_desc("ratio (log scale), 95 % intervals")
            .draw()
            .map_err(|e| e.to_string())?;
        let at = |i: usize| SegmentValue::CenterOf(n - 1 - i as i32);
        let edge = |i: i32| SegmentValue::Exact(i);
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        chart
            .draw_series(DashedLineSeries::new([(1.0, edge(0)), (1.0, edge(n))], 4, 4, BLACK.mix(0.6).stroke_width(1)))
            .map_err(err)?;
        for (i, r) in rows.iter().enumerate() {
            let colour = if r.block { BAR_FILL.mix(0.6) } else { BLACK.mix(1.0) };
            chart
                .draw_series([PathElement::new(vec![(r.low, at(i)), (r.high, at(i))], colour.stroke_width(2))])
                .map_err(err)?;
            let size = if r.block { 3 } else { 5 };
            chart.draw_series([Circle::new((r.mean, at(i)), size, colour.filled())]).map_err(err)?;
            if let Some(b) = r.bound {
                let y = n - 1 - i as i32;
                chart
                    .draw_series([PathElement::new(vec![(b, edge(y)), (b, edge(y + 1))], BOUND.stroke_width(2))])
                    .map_err(err)?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A forest plot in its figure, or why there is none.
fn forest_figure(title: &str, rows: &[ForestRow]) -> String {
    match forest(title, rows) {
        Ok(svg) => format!("<figure class=\"chart\">{svg}</figure>\n"),
        Err(e) => format!("<p>no forest plot: {}</p>\n", escape(&e)),
    }
}

/// The forest plot's rows of a study's outcome: each case over the
/// baseline, then each claim's ratios with its bound.
pub fn study_forest(outcome: &StudyOutcome) -> Vec<ForestRow> {
    let mut rows: Vec<ForestRow> = outcome
        .vs_baseline
        .iter()
        .filter_map(|v| {
            let s = v.ratio.as_ref()?;
            Some(ForestRow::new(v.case.to_string(), s.mean, s.interval, None, false))
        })
        .collect();
    for f in &outcome.findings {
        for r in &f.ratios {
            rows.push(ForestRow::new(r.label.clone(), r.mean, r.interval, Some(r.bound), false));
        }
    }
    rows
}

/// The rows of a merged study's ratio: each block's, then the pooled one.
fn pooled_rows(
    label: &str,
    blocks: &[crate::findings::BlockRatio],
    pooled: (f64, Option<crate::stats::Interval>),
    bound: Option<f64>,
) -> Vec<ForestRow> {
    let mut rows: Vec<ForestRow> =
        blocks.iter().map(|b| ForestRow::new(format!("  {}", b.block), b.mean, b.interval, bound, true)).collect();
    rows.push(ForestRow::new(format!("{label} (pooled)"), pooled.0, pooled.1, bound, false));
    rows
}

/// The page of a merged study (`vlab merge --html`): its blocks, per kernel
/// a forest plot of each case's ratio to the baseline and each claim's
/// ratio (each block's, then pooled), the tables, the findings, and each
/// block's throughput (never pooled).
pub fn merged_page(m: &crate::merge::Merged) -> String {
    let mut body = format!(
        "<p>{} blocks; model: {}.</p>\n<table>\n<tr><th>block</th><th>rounds</th><th>machine</th><th>report</th></tr>\n",
        m.blocks.len(),
        escape(m.model)
    );
    for b in &m.blocks {
        body.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
            escape(&b.name),
            b.repeat,
            escape(&b.machine.to_string()),
            escape(&b.file)
        ));
    }
    body.push_str("</table>\n");
    let cell = crate::merge::ratio_cell;
    for k in &m.kernels {
        body.push_str(&format!(
            "<h2>kernel {}: each case over <code>{}</code></h2>\n",
            escape(&k.kernel),
            escape(&m.baseline)
        ));
        let mut rows = Vec::new();
        for c in &k.vs_baseline {
            if let Some(p) = &c.pooled {
                rows.extend(pooled_rows(&c.case.to_string(), &c.blocks, (p.mixed.mean, p.mixed.interval), None));
            }
        }
        for f in &k.findings {
            for r in &f.ratios {
                rows.extend(pooled_rows(&r.label, &r.blocks, (r.mean, r.interval), Some(r.bound)));
            }
        }
        body.push_str(&forest_figure(
            &format!("{} (kernel {}): ratios, by block and pooled", m.study, k.kernel),
            &rows,
        ));
        let heads: String = m.blocks.iter().map(|b| format!("<th>{}</th>", escape(&b.name))).collect();
        body.push_str(&format!(
            "<table>\n<tr><th>case</th><th>against</th><th>pooled</th><th>block means</th>{heads}</tr>\n"
        ));
        for c in &k.vs_baseline {
            let (mixed, means) = c.pooled.as_ref().map_or(("-".into(), "-".into()), |p| {
                (cell(p.mixed.mean, p.mixed.interval), cell(p.block_means.mean, p.block_means.interval))
            });
            let per: String = c.blocks.iter().map(|b| format!("<td>{}</td>", cell(b.mean, b.interval))).collect();
            body.push_str(&format!(
                "<tr><td><code>{}</code></td><td><code>{}</code></td><td><b>{mixed}</b></td><td>{means}</td>{per}</tr>\n",
                escape(&c.case.to_string()),
                escape(&c.against.case)
            ));
        }
        body.push_str("</table>\n");
        body.push_str(&findings_table(&k.findings, "Findings, judged on the pooled ratios"));
        body.push_str(&format!(
            "<h3>Throughput by block (medians; never pooled)</h3>\n<table>\n<tr><th>case</th>{heads}</tr>\n"
        ));
        for t in &k.throughput {
            let per: String =
                t.blocks.iter().map(|(_, bps)| format!("<td>{}</td>", escape(&crate::report::fmt_bps(*bps)))).collect();
            body.push_str(&format!("<tr><td><code>{}</code></td>{per}</tr>\n", escape(&t.case.to_string())));
        }
        body.push_str("</table>\n");
    }
    for kr in &m.kernel_ratios {
        body.push_str(&format!("<h2>kernel {} over kernel {}</h2>\n", escape(&kr.kernel), escape(&kr.against)));
        let mut rows = Vec::new();
        for c in &kr.cases {
            if let Some(p) = &c.pooled {
                rows.extend(pooled_rows(&c.case.to_string(), &c.blocks, (p.mixed.mean, p.mixed.interval), None));
            }
        }
        body.push_str(&forest_figure(&format!("kernel {} over {}", kr.kernel, kr.against), &rows));
    }
    wrap(&format!("vlab: study {} merged", m.study), &body)
}

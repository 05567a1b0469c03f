//! Curves against the draw count S, one panel per loss and one line per estimator: total
//! variance, mean squared error, bias norm and signal-to-noise ratio of the W-gradient
//! estimate; and the mean squared error against the cost, the loss evaluations of one
//! estimate (`mse-evaluations`: estimators that pay more per draw move right, so equal cost
//! reads vertically). Both axes are logarithmic (drawn as `log2 S` or `log10 evaluations`, and
//! `log10 value`, with their own labels); the legend groups the estimators by family; Monte Carlo points carry 95% confidence bars (`±1.96` standard errors) and the
//! exact closed forms are dashed.
//!
//! A log axis cannot show a value `<= 0`: such points are left out (the seed loss has an exact
//! gradient of 0, and MuProp and the Gumbel estimators then have no variance at all), and the
//! legend names what was left out.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{decade_label, estimator_group, estimator_style, marker_element, msg, Figure, FONT};
use crate::record::Record;
use crate::summary::Summary;

/// Two-sided 95% normal quantile.
const Z95: f64 = 1.959_963_985;

/// What a sweep figure shows against S.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Total variance `sum_ij Var G_ij` (exact closed form dashed).
    Variance,
    /// Mean squared error `E ||G_hat - G||^2` (for unbiased estimators the exact variance).
    Mse,
    /// The mean squared error against the loss evaluations of one estimate.
    MseEvaluations,
    /// Bias norm `||E G_hat - G||`.
    Bias,
    /// Signal-to-noise ratio `||E G_hat|| / sqrt(sum_ij Var G_ij)`.
    Snr,
}

impl Metric {
    /// Every metric, in the order the files are written.
    pub const ALL: [Metric; 5] = [
        Metric::Variance,
        Metric::Mse,
        Metric::MseEvaluations,
        Metric::Bias,
        Metric::Snr,
    ];

    /// File name without extension.
    pub fn stem(self) -> &'static str {
        match self {
            Metric::Variance => "variance",
            Metric::Mse => "mse",
            Metric::MseEvaluations => "mse-evaluations",
            Metric::Bias => "bias",
            Metric::Snr => "snr",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Metric::Variance => "Variance of the gradient estimate Ĝ of ∂L/∂W against draws S",
            Metric::Mse => "Mean squared error of Ĝ against draws S (biased estimators level off)",
            Metric::MseEvaluations => {
                "Mean squared error of Ĝ against its cost in loss evaluations (equal cost: read vertically)"
            }
            Metric::Bias => "Bias of Ĝ against draws S",
            Metric::Snr => "Signal-to-noise ratio of Ĝ against draws S",
        }
    }

    fn y_label(self) -> &'static str {
        match self {
            Metric::Variance => "total variance Σ Var Ĝ  [(loss/weight)²]",
            Metric::Mse | Metric::MseEvaluations => "MSE  E‖Ĝ − G‖²  [(loss/weight)²]",
            Metric::Bias => "bias  ‖E Ĝ − G‖  [loss/weight]",
            Metric::Snr => "SNR  ‖E Ĝ‖ / √(Σ Var Ĝ)  [1]",
        }
    }

    /// The Monte Carlo value and its standard error.
    fn value(self, r: &Record) -> Option<(f64, f64)> {
        match self {
            Metric::Variance => Some((r.total_var_w, r.total_var_w_se)),
            Metric::Mse | Metric::MseEvaluations => Some((r.mse_w, r.mse_w_se)),
            Metric::Bias => Some((r.bias_norm_w, r.bias_norm_w_se)),
            Metric::Snr => r.snr.map(|v| (v, r.snr_se.unwrap_or(0.0))),
        }
    }

    /// Whether the x axis is the cost (loss evaluations) rather than the draws S.
    fn against_cost(self) -> bool {
        self == Metric::MseEvaluations
    }

    /// A record's x coordinate: `log2 S`, or `log10` of its loss evaluations (`None` for a
    /// summary that predates them).
    fn x(self, r: &Record) -> Option<f64> {
        if self.against_cost() {
            (r.loss_evaluations > 0.0).then(|| r.loss_evaluations.log10())
        } else {
            Some(f64::from(r.samples).log2())
        }
    }

    /// The exact value, where a closed form exists.
    fn exact(self, r: &Record) -> Option<f64> {
        match self {
            Metric::Variance => r.exact_total_var_w,
            Metric::Mse | Metric::MseEvaluations => r.exact_total_var_w.filter(|_| r.unbiased),
            Metric::Bias => None,
            Metric::Snr => {
                let var: f64 = r.exact_var.as_ref()?.iter().sum();
                let signal = r.exact_grad.iter().map(|g| g * g).sum::<f64>().sqrt();
                // A variance at rounding level (MuProp on a linear loss) is zero, not a huge SNR.
                (r.unbiased && var > 1e-20 * signal * signal).then(|| signal / var.sqrt())
            }
        }
    }
}

/// One point of a curve, in plot coordinates (`log2 S`, `log10 value`).
#[derive(Clone, Copy, Debug)]
struct CurvePoint {
    x: f64,
    y: f64,
    lo: Option<f64>,
    hi: f64,
}

struct Curve {
    estimator: String,
    points: Vec<CurvePoint>,
    exact: Vec<(f64, f64)>,
    omitted: bool,
}

struct Panel {
    loss: String,
    curves: Vec<Curve>,
}

/// A sweep figure: one metric, one panel per loss.
pub struct SweepFigure {
    metric: Metric,
    reps: u32,
    estimators: Vec<String>,
    panels: Vec<Panel>,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

fn loss_formula(loss: &str) -> &'static str {
    match loss {
        "seed" => "f(y) = Σ(T − y)",
        "squared" => "f(y) = ‖T − y‖²",
        "linear" => "f(y) = T·y",
        _ => "",
    }
}

impl SweepFigure {
    /// The figure of `metric` for a summary's records.
    pub fn new(summary: &Summary, metric: Metric) -> Self {
        let mut panels = Vec::new();
        let (mut ymin, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut xmin, mut xmax) = (f64::INFINITY, f64::NEG_INFINITY);
        for loss in &summary.config.losses {
            let rows_of = |est: &String| -> Vec<&Record> {
                summary
                    .records
                    .iter()
                    .filter(|r| &r.loss == loss && &r.estimator == est)
                    .collect()
            };
            // Values below 1e-10 of the panel's largest are rounding error of a quantity that
            // is exactly zero (seed loss): they are left out like zeros. (Not for the SNR, a
            // ratio whose small values are real.)
            let panel_max = summary
                .records
                .iter()
                .filter(|r| &r.loss == loss)
                .flat_map(|r| [metric.value(r).map(|v| v.0), metric.exact(r)])
                .flatten()
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max);
            let floor = if metric == Metric::Snr {
                0.0
            } else {
                panel_max * 1e-10
            };
            let drawable = |v: f64| v.is_finite() && v > floor && v > 0.0;
            let mut curves = Vec::new();
            for est in &summary.config.estimators {
                let rows = rows_of(est);
                if rows.is_empty() {
                    continue;
                }
                let mut curve = Curve {
                    estimator: est.clone(),
                    points: Vec::new(),
                    exact: Vec::new(),
                    omitted: false,
                };
                for r in rows {
                    let Some(x) = metric.x(r) else {
                        curve.omitted = true;
                        continue;
                    };
                    xmin = xmin.min(x);
                    xmax = xmax.max(x);
                    match metric.value(r) {
                        Some((v, se)) if drawable(v) => {
                            let lo = v - Z95 * se;
                            let point = CurvePoint {
                                x,
                                y: v.log10(),
                                lo: (lo > floor && lo > 0.0).then(|| lo.log10()),
                                hi: (v + Z95 * se).log10(),
                            };
                            ymin = ymin.min(point.lo.unwrap_or(point.y));
                            ymax = ymax.max(point.hi);
                            curve.points.push(point);
                        }
                        _ => curve.omitted = true,
                    }
                    if let Some(e) = metric.exact(r).filter(|&e| drawable(e)) {
                        ymin = ymin.min(e.log10());
                        ymax = ymax.max(e.log10());
                        curve.exact.push((x, e.log10()));
                    }
                }
                curves.push(curve);
            }
            panels.push(Panel {
                loss: loss.clone(),
                curves,
            });
        }
        if !ymin.is_finite() {
            (ymin, ymax) = (-1.0, 1.0);
        }
        let smax = summary
            .config
            .samples
            .iter()
            .copied()
            .max()
            .unwrap_or(1)
            .max(2);
        let smin = summary.config.samples.iter().copied().min().unwrap_or(1);
        let x_range = if !metric.against_cost() {
            (f64::from(smin).log2() - 0.4, f64::from(smax).log2() + 0.4)
        } else if xmin.is_finite() {
            (xmin - 0.15, xmax.max(xmin + 1.0) + 0.15)
        } else {
            (-0.15, 1.15)
        };
        Self {
            metric,
            reps: summary.config.reps,
            estimators: summary.config.estimators.clone(),
            panels,
            x_range,
            y_range: ((ymin - 0.15).floor(), (ymax + 0.15).ceil()),
        }
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        panel: &Panel,
    ) -> Result<(), String> {
        let (x0, x1) = self.x_range;
        let (y0, y1) = self.y_range;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("loss: {}   {}", panel.loss, loss_formula(&panel.loss)),
                (FONT, 22),
            )
            .margin(12)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(msg)?;
        let decades = (y1 - y0).round() as usize + 1;
        let cost = self.metric.against_cost();
        let x_format = |v: &f64| {
            if cost {
                decade_label(*v)
            } else {
                format!("{}", 2f64.powf(*v).round())
            }
        };
        chart
            .configure_mesh()
            .x_labels(if cost {
                ((x1 - x0).floor() as usize + 1).clamp(2, 9)
            } else {
                8
            })
            .y_labels(decades.min(9))
            .x_label_formatter(&x_format)
            .y_label_formatter(&|v| decade_label(*v))
            .x_desc(if cost {
                "loss evaluations per estimate"
            } else {
                "draws per estimate S"
            })
            .y_desc(self.metric.y_label())
            .label_style((FONT, 17))
            .axis_desc_style((FONT, 18))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(msg)?;
        let bottom = y0;
        for curve in &panel.curves {
            let (color, marker) = estimator_style(&curve.estimator);
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().map(|p| (p.x, p.y)),
                    color.stroke_width(2),
                ))
                .map_err(msg)?;
            for p in &curve.points {
                let lo = p.lo.unwrap_or(bottom);
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(p.x, lo), (p.x, p.hi)],
                        color.stroke_width(2),
                    )))
                    .map_err(msg)?;
                for end in [Some(p.hi), p.lo].into_iter().flatten() {
                    chart
                        .draw_series(std::iter::once(
                            EmptyElement::at((p.x, end))
                                + PathElement::new(vec![(-4, 0), (4, 0)], color.stroke_width(2)),
                        ))
                        .map_err(msg)?;
                }
                // Markers are drawn in pixels on the panel (a marker is not a chart series).
                let (px, py) = chart.backend_coord(&(p.x, p.y));
                let base = area.get_base_pixel();
                area.draw(&marker_element(
                    marker,
                    (px - base.0, py - base.1),
                    5,
                    color,
                ))
                .map_err(msg)?;
            }
            // The exact closed form on top, in a darker shade, so it shows over the points.
            let dark = RGBColor(color.0 / 2, color.1 / 2, color.2 / 2);
            if curve.exact.len() > 1 {
                chart
                    .draw_series(DashedLineSeries::new(
                        curve.exact.iter().copied(),
                        9,
                        6,
                        dark.stroke_width(2),
                    ))
                    .map_err(msg)?;
            } else if let Some(&p) = curve.exact.first() {
                chart
                    .draw_series(std::iter::once(Circle::new(p, 6, dark.stroke_width(1))))
                    .map_err(msg)?;
            }
        }
        Ok(())
    }

    /// The legend's lines of estimators: one group per family (in registry order), wrapped
    /// to `width` pixels; each entry is (x, group label or estimator id, is a label).
    fn legend_lines(&self, width: i32) -> Vec<Vec<(i32, String, bool)>> {
        let mut groups: Vec<(&str, Vec<&String>)> = Vec::new();
        for est in &self.estimators {
            let group = estimator_group(est);
            match groups.iter_mut().find(|g| g.0 == group) {
                Some(g) => g.1.push(est),
                None => groups.push((group, vec![est])),
            }
        }
        let mut lines = Vec::new();
        for (group, members) in groups {
            let label = format!("{group}:");
            let indent = 20 + text_width(&label) + 16;
            let mut line = vec![(20, label, true)];
            let mut x = indent;
            for est in members {
                let w = 44 + text_width(est) + 28;
                if x + w > width && line.len() > 1 {
                    lines.push(std::mem::take(&mut line));
                    x = indent;
                }
                line.push((x, est.clone(), false));
                x += w;
            }
            lines.push(line);
        }
        lines
    }

    /// Height of the legend area in pixels.
    fn legend_height(&self) -> u32 {
        let (width, _) = self.size_without_legend();
        let lines = self.legend_lines(width as i32 - 40).len().max(1) as u32;
        30 * lines + 60 + 24 * self.panels.len() as u32
    }

    fn size_without_legend(&self) -> (u32, u32) {
        (60 + 560 * self.panels.len().max(2) as u32, 550)
    }

    fn draw_legend<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let (width, _) = area.dim_in_pixel();
        let text = TextStyle::from((FONT, 18)).color(&BLACK);
        let label = TextStyle::from((FONT, 18)).color(&RGBColor(90, 90, 90));
        let lines = self.legend_lines(width as i32);
        for (row, line) in lines.iter().enumerate() {
            let y = 18 + 30 * row as i32;
            for (x, name, is_label) in line {
                if *is_label {
                    area.draw_text(name, &label, (*x, y - 10)).map_err(msg)?;
                    continue;
                }
                let (color, marker) = estimator_style(name);
                area.draw(&PathElement::new(
                    vec![(*x, y), (x + 36, y)],
                    color.stroke_width(2),
                ))
                .map_err(msg)?;
                area.draw(&marker_element(marker, (x + 18, y), 5, color))
                    .map_err(msg)?;
                area.draw_text(name, &text, (x + 44, y - 10)).map_err(msg)?;
            }
        }
        let base = 30 * lines.len().max(1) as i32 - 30;
        let grey = RGBColor(60, 60, 60);
        let small = TextStyle::from((FONT, 17)).color(&grey);
        let mut x = 20;
        let y = 52 + base;
        area.draw(&PathElement::new(
            vec![(x, y), (x + 36, y)],
            grey.stroke_width(2),
        ))
        .map_err(msg)?;
        area.draw(&PathElement::new(
            vec![(x + 18, y - 8), (x + 18, y + 8)],
            grey.stroke_width(2),
        ))
        .map_err(msg)?;
        area.draw_text(
            &format!(
                "Monte Carlo, R = {} repetitions, bars: 95% confidence",
                self.reps
            ),
            &small,
            (x + 44, y - 10),
        )
        .map_err(msg)?;
        x += 560;
        if self.metric != Metric::Bias {
            area.draw(&PathElement::new(
                vec![(x, y), (x + 10, y)],
                grey.stroke_width(2),
            ))
            .map_err(msg)?;
            area.draw(&PathElement::new(
                vec![(x + 16, y), (x + 26, y)],
                grey.stroke_width(2),
            ))
            .map_err(msg)?;
            area.draw(&PathElement::new(
                vec![(x + 32, y), (x + 36, y)],
                grey.stroke_width(2),
            ))
            .map_err(msg)?;
            let exact = match self.metric {
                Metric::Mse | Metric::MseEvaluations => {
                    "exact (unbiased estimators: MSE = variance)"
                }
                Metric::Snr => "exact (unbiased estimators)",
                _ => "exact closed form (darker)",
            };
            area.draw_text(exact, &small, (x + 44, y - 10))
                .map_err(msg)?;
        }
        let what = if self.metric == Metric::Snr {
            "no variance, "
        } else {
            ""
        };
        let mut y = 80 + base;
        for panel in &self.panels {
            let names: Vec<&str> = panel
                .curves
                .iter()
                .filter(|c| c.omitted)
                .map(|c| c.estimator.as_str())
                .collect();
            if names.is_empty() {
                continue;
            }
            let note = format!(
                "{}: not drawn where the value cannot go on a log axis ({what}zero, zero up to rounding, or NaN): {}",
                panel.loss,
                names.join(", ")
            );
            area.draw_text(&note, &small, (20, y)).map_err(msg)?;
            y += 24;
        }
        Ok(())
    }
}

impl Figure for SweepFigure {
    fn stem(&self) -> String {
        self.metric.stem().to_string()
    }

    fn size(&self) -> (u32, u32) {
        let (width, plots) = self.size_without_legend();
        (width, plots + self.legend_height())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let area = root
            .margin(8, 0, 0, 0)
            .titled(self.metric.title(), (FONT, 26))
            .map_err(msg)?
            .margin(0, 0, 20, 20);
        let (_, height) = area.dim_in_pixel();
        let (plots, legend) = area.split_vertically(height as i32 - self.legend_height() as i32);
        let cells = plots.split_evenly((1, self.panels.len().max(1)));
        for (cell, panel) in cells.iter().zip(&self.panels) {
            self.draw_panel(cell, panel)?;
        }
        self.draw_legend(&legend)
    }
}

/// The width of `text` in the legend's 18-pixel font, estimated (DejaVu Sans averages about
/// 10 pixels a character at that size; an overestimate only wraps a line early).
fn text_width(text: &str) -> i32 {
    10 * text.chars().count() as i32
}

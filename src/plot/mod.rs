//! Plots people would put in a paper: PNG and SVG through plotters, with text rendered from
//! the DejaVu Sans font shipped in `assets/` (no system font library is needed). Owns the
//! shared look (one colour and marker per estimator, decade labels for log axes) and the
//! rendering of one figure into both formats; [`sweep`] draws the curves against S and
//! [`heatmap`] the gradient and variance maps.

pub mod heatmap;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::element::{DynElement, IntoDynElement};
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::problem::Problem;
use crate::summary::Summary;

/// The font family name every plot uses.
pub const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the shipped font with plotters (once per process). Call before drawing text.
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to be valid.
        let _ =
            plotters::style::register_font(FONT, plotters::style::FontStyle::Normal, FONT_BYTES);
    });
}

/// Writes every plot of a run into `dir`, PNG and SVG each, and returns the file names.
///
/// # Errors
/// [`Error::Plot`] naming the plot that failed.
pub fn write_all(summary: &Summary, problem: &Problem, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for metric in sweep::Metric::ALL {
        files.extend(render(&sweep::SweepFigure::new(summary, metric), dir)?);
    }
    if problem.l == 1 && problem.d == heatmap::IMAGE_SIDE * heatmap::IMAGE_SIDE {
        for loss in &summary.config.losses {
            if let Some(figure) = heatmap::MapFigure::new(summary, problem, loss) {
                files.extend(render(&figure, dir)?);
            }
        }
    }
    Ok(files)
}

/// A raster image placed on a figure (drawn as pixels in PNG, embedded as an image in SVG).
#[derive(Clone, Debug)]
pub struct Raster {
    /// Top-left corner in figure pixels.
    pub at: (i32, i32),
    /// Displayed size in figure pixels.
    pub size: (u32, u32),
    /// Image width and height in image pixels.
    pub dims: (u32, u32),
    /// RGB bytes, row-major, `dims.0 * dims.1 * 3` of them.
    pub rgb: Vec<u8>,
}

/// A figure that can be drawn on any plotters backend.
pub trait Figure {
    /// File name without extension.
    fn stem(&self) -> String;
    /// Size in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws everything but the rasters.
    ///
    /// # Errors
    /// A message for any drawing failure.
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
    /// Raster images to place on the figure.
    fn rasters(&self) -> Vec<Raster> {
        Vec::new()
    }
}

/// Maps any displayable drawing error to a message.
pub(crate) fn msg<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Renders a figure to `dir/STEM.png` and `dir/STEM.svg`.
///
/// # Errors
/// [`Error::Plot`] naming the figure.
pub fn render(figure: &impl Figure, dir: &Path) -> Result<Vec<PathBuf>> {
    ensure_font();
    let stem = figure.stem();
    let plot_err = |message: String| Error::Plot {
        name: stem.clone(),
        message,
    };
    let rasters = figure.rasters();

    let png = format!("{stem}.png");
    {
        let png_path = dir.join(&png);
        let root = BitMapBackend::new(&png_path, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(msg).map_err(plot_err)?;
        figure.draw(&root).map_err(plot_err)?;
        for r in &rasters {
            draw_raster(&root, r).map_err(plot_err)?;
        }
        root.present().map_err(msg).map_err(plot_err)?;
    }

    let svg_name = format!("{stem}.svg");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(msg).map_err(plot_err)?;
        figure.draw(&root).map_err(plot_err)?;
        root.present().map_err(msg).map_err(plot_err)?;
    }
    if !rasters.is_empty() {
        let images: String = rasters
            .iter()
            .map(svg_image)
            .collect::<std::result::Result<_, _>>()
            .map_err(plot_err)?;
        let end = svg
            .rfind("</svg>")
            .ok_or_else(|| plot_err("SVG output has no </svg>".into()))?;
        svg.insert_str(end, &images);
    }
    let path = dir.join(&svg_name);
    std::fs::write(&path, svg).map_err(|source| Error::Write { path, source })?;
    Ok(vec![PathBuf::from(png), PathBuf::from(svg_name)])
}

fn draw_raster<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    r: &Raster,
) -> std::result::Result<(), String> {
    let (w, h) = r.dims;
    let (cw, ch) = (r.size.0 as f64 / w as f64, r.size.1 as f64 / h as f64);
    for row in 0..h {
        for col in 0..w {
            let i = ((row * w + col) * 3) as usize;
            let color = RGBColor(r.rgb[i], r.rgb[i + 1], r.rgb[i + 2]);
            let x0 = r.at.0 + (col as f64 * cw).round() as i32;
            let y0 = r.at.1 + (row as f64 * ch).round() as i32;
            let x1 = r.at.0 + ((col + 1) as f64 * cw).round() as i32;
            let y1 = r.at.1 + ((row + 1) as f64 * ch).round() as i32;
            root.draw(&Rectangle::new([(x0, y0), (x1, y1)], color.filled()))
                .map_err(msg)?;
        }
    }
    Ok(())
}

/// An SVG `<image>` element holding the raster as an embedded PNG, drawn without smoothing.
fn svg_image(r: &Raster) -> std::result::Result<String, String> {
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, r.dims.0, r.dims.1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(msg)?;
        writer.write_image_data(&r.rgb).map_err(msg)?;
    }
    Ok(format!(
        "<image x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" preserveAspectRatio=\"none\" \
         style=\"image-rendering:pixelated\" href=\"data:image/png;base64,{}\"/>\n",
        r.at.0,
        r.at.1,
        r.size.0,
        r.size.1,
        base64(&png_bytes)
    ))
}

/// Standard base64 (RFC 4648) with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A marker shape; every estimator gets a different one, so lines stay apart in grey print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// Filled circle.
    Circle,
    /// Filled square.
    Square,
    /// Filled triangle.
    Triangle,
    /// Filled diamond.
    Diamond,
    /// Diagonal cross.
    Cross,
    /// Hollow circle.
    OpenCircle,
    /// Hollow square.
    OpenSquare,
    /// Hollow triangle.
    OpenTriangle,
    /// Filled triangle pointing down.
    TriangleDown,
    /// Hollow triangle pointing down.
    OpenTriangleDown,
    /// Hollow diamond.
    OpenDiamond,
    /// Upright cross.
    Plus,
    /// Six-armed asterisk.
    Asterisk,
    /// Filled five-pointed star.
    Star,
    /// Filled pentagon.
    Pentagon,
    /// Hollow pentagon.
    OpenPentagon,
    /// Filled hexagon.
    Hexagon,
    /// Hollow hexagon.
    OpenHexagon,
}

/// Every estimator's look: a colour and a marker of its own, never shared by two estimators
/// (a test checks it over the registry and the reserved ids). The first eight are the
/// Okabe-Ito colour-blind-safe palette (yellow replaced by a dark grey-olive that reads on
/// white); the rest are saturated colours chosen as far (in RGB) from them and from each other
/// as possible. Ids not yet in the registry keep their place here, so an estimator looks the
/// same on every branch.
pub const STYLES: &[(&str, RGBColor, Marker)] = &[
    ("exact", RGBColor(0, 0, 0), Marker::Diamond),
    ("reinforce", RGBColor(213, 94, 0), Marker::Circle),
    ("reinforce-ema", RGBColor(230, 159, 0), Marker::OpenCircle),
    ("rloo", RGBColor(204, 121, 167), Marker::Triangle),
    ("muprop", RGBColor(0, 114, 178), Marker::Square),
    ("muprop-c", RGBColor(86, 180, 233), Marker::OpenSquare),
    ("gumbel-softmax", RGBColor(0, 158, 115), Marker::Cross),
    ("st-gumbel", RGBColor(120, 120, 60), Marker::OpenTriangle),
    ("arsm", RGBColor(90, 0, 180), Marker::Star),
    ("disarm", RGBColor(180, 0, 90), Marker::OpenDiamond),
    ("unordered-set", RGBColor(0, 100, 0), Marker::Pentagon),
    ("sum-and-sample", RGBColor(0, 0, 255), Marker::TriangleDown),
    ("indecater", RGBColor(128, 0, 0), Marker::Hexagon),
    ("st", RGBColor(255, 0, 0), Marker::Plus),
    ("gumbel-rao", RGBColor(0, 0, 128), Marker::OpenPentagon),
    ("reinmax", RGBColor(0, 190, 0), Marker::Asterisk),
    ("rebar", RGBColor(68, 170, 153), Marker::OpenHexagon),
    ("relax", RGBColor(160, 82, 45), Marker::OpenTriangleDown),
];

/// The look of an id missing from [`STYLES`] (never two such in a plot that a test knows of).
const UNKNOWN_STYLE: (RGBColor, Marker) = (RGBColor(128, 128, 128), Marker::Cross);

/// The colour and marker of an estimator (fixed by its id, so an estimator looks the same in
/// every plot).
pub fn estimator_style(id: &str) -> (RGBColor, Marker) {
    STYLES
        .iter()
        .find(|s| s.0 == id)
        .map_or(UNKNOWN_STYLE, |s| (s.1, s.2))
}

/// The legend group of an estimator: its family in the registry (the score-function family
/// reads categories, the relaxed one Gumbel noise).
pub fn estimator_group(id: &str) -> &'static str {
    match crate::estimators::by_id(id).map(|e| e.family()) {
        Ok(crate::estimators::Family::ScoreFunction) => "score function",
        Ok(crate::estimators::Family::Relaxed) => "relaxed",
        Err(_) => "other",
    }
}

/// A marker of `size` pixels (half-width) at `at`, for any coordinate system.
pub fn marker_element<'a, C: Clone + 'a, DB: DrawingBackend + 'a>(
    marker: Marker,
    at: C,
    size: i32,
    color: RGBColor,
) -> DynElement<'a, DB, C> {
    let fill = ShapeStyle::from(&color).filled();
    let line = ShapeStyle::from(&color).stroke_width(2);
    let s = size;
    let tri = vec![(0, -s - 1), (s + 1, s), (-s - 1, s)];
    let base = EmptyElement::at(at);
    match marker {
        Marker::Circle => (base + Circle::new((0, 0), s, fill)).into_dyn(),
        Marker::OpenCircle => (base + Circle::new((0, 0), s, line)).into_dyn(),
        Marker::Square => (base + Rectangle::new([(-s, -s), (s, s)], fill)).into_dyn(),
        Marker::OpenSquare => (base + Rectangle::new([(-s, -s), (s, s)], line)).into_dyn(),
        Marker::Triangle => (base + Polygon::new(tri, fill)).into_dyn(),
        Marker::OpenTriangle => (base + PathElement::new(closed(tri), line)).into_dyn(),
        Marker::Diamond => (base
            + Polygon::new(vec![(0, -s - 1), (s + 1, 0), (0, s + 1), (-s - 1, 0)], fill))
        .into_dyn(),
        Marker::Cross => (base
            + PathElement::new(vec![(-s, -s), (s, s)], line)
            + PathElement::new(vec![(-s, s), (s, -s)], line))
        .into_dyn(),
        Marker::TriangleDown => (base + Polygon::new(flip(tri), fill)).into_dyn(),
        Marker::OpenTriangleDown => (base + PathElement::new(closed(flip(tri)), line)).into_dyn(),
        Marker::OpenDiamond => (base
            + PathElement::new(
                closed(vec![(0, -s - 1), (s + 1, 0), (0, s + 1), (-s - 1, 0)]),
                line,
            ))
        .into_dyn(),
        Marker::Plus => (base
            + PathElement::new(vec![(-s - 1, 0), (s + 1, 0)], line)
            + PathElement::new(vec![(0, -s - 1), (0, s + 1)], line))
        .into_dyn(),
        Marker::Asterisk => {
            let arm = |deg: f64| {
                let (x, y) = polar(s + 1, deg);
                PathElement::new(vec![(x, y), (-x, -y)], line)
            };
            (base + arm(90.0) + arm(30.0) + arm(150.0)).into_dyn()
        }
        Marker::Star => {
            let points: Vec<(i32, i32)> = (0..10)
                .map(|i| {
                    let r = if i % 2 == 0 { s + 2 } else { (s + 2) / 2 };
                    polar(r, 90.0 + 36.0 * f64::from(i))
                })
                .collect();
            (base + Polygon::new(points, fill)).into_dyn()
        }
        Marker::Pentagon => (base + Polygon::new(regular(5, s + 1), fill)).into_dyn(),
        Marker::OpenPentagon => {
            (base + PathElement::new(closed(regular(5, s + 1)), line)).into_dyn()
        }
        Marker::Hexagon => (base + Polygon::new(regular(6, s + 1), fill)).into_dyn(),
        Marker::OpenHexagon => {
            (base + PathElement::new(closed(regular(6, s + 1)), line)).into_dyn()
        }
    }
}

/// A point at radius `r` pixels and angle `deg` (counter-clockwise from the x axis; pixel y
/// grows downwards).
fn polar(r: i32, deg: f64) -> (i32, i32) {
    let t = deg.to_radians();
    (
        (f64::from(r) * t.cos()).round() as i32,
        -(f64::from(r) * t.sin()).round() as i32,
    )
}

/// The corners of a regular polygon with `n` corners, one at the top.
fn regular(n: u32, r: i32) -> Vec<(i32, i32)> {
    (0..n)
        .map(|i| polar(r, 90.0 + 360.0 * f64::from(i) / f64::from(n)))
        .collect()
}

/// A polygon's outline, closed.
fn closed(mut points: Vec<(i32, i32)>) -> Vec<(i32, i32)> {
    points.push(points[0]);
    points
}

/// Mirrored top to bottom.
fn flip(points: Vec<(i32, i32)>) -> Vec<(i32, i32)> {
    points.into_iter().map(|(x, y)| (x, -y)).collect()
}

/// `10^e` written with superscript digits (`10⁻³`), for decade ticks of a log axis that is
/// drawn as `log10(value)`; a tick between decades gets the plain value.
pub fn decade_label(e: f64) -> String {
    if (e - e.round()).abs() > 1e-6 {
        return format!("{:.1e}", 10f64.powf(e));
    }
    let e = e.round() as i64;
    match e {
        0 => "1".into(),
        1 => "10".into(),
        _ => {
            let sup: String = e
                .to_string()
                .chars()
                .map(|c| match c {
                    '-' => '⁻',
                    '0' => '⁰',
                    '1' => '¹',
                    '2' => '²',
                    '3' => '³',
                    '4' => '⁴',
                    '5' => '⁵',
                    '6' => '⁶',
                    '7' => '⁷',
                    '8' => '⁸',
                    _ => '⁹',
                })
                .collect();
            format!("10{sup}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn decade_labels_use_superscripts() {
        assert_eq!(decade_label(-3.0), "10⁻³");
        assert_eq!(decade_label(0.0), "1");
        assert_eq!(decade_label(12.0), "10¹²");
        assert_eq!(decade_label(0.5), "3.2e0");
    }

    #[test]
    fn estimators_look_different() {
        // Every registered estimator has a style of its own, and no two styles (the reserved
        // ids included) share a colour or a marker; colours stay apart in RGB.
        for e in crate::estimators::REGISTRY {
            assert!(
                STYLES.iter().any(|s| s.0 == e.id()),
                "{} has no style in STYLES",
                e.id()
            );
        }
        for (i, a) in STYLES.iter().enumerate() {
            for b in &STYLES[i + 1..] {
                assert!(
                    a.0 != b.0 && a.2 != b.2,
                    "{} and {} share a marker",
                    a.0,
                    b.0
                );
                let d = ((f64::from(a.1 .0) - f64::from(b.1 .0)).powi(2)
                    + (f64::from(a.1 .1) - f64::from(b.1 .1)).powi(2)
                    + (f64::from(a.1 .2) - f64::from(b.1 .2)).powi(2))
                .sqrt();
                assert!(d >= 45.0, "{} and {} look alike ({d:.0})", a.0, b.0);
            }
        }
    }
}

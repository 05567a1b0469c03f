//! Plots people would put in a paper: PNG and SVG through plotters, with text rendered from
//! the DejaVu Sans font shipped in `assets/` (no system font library is needed).

use std::sync::Once;

/// The font family name every plot uses.
pub const FONT: &str = "sans-serif";

static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers the shipped font with plotters (once per process). Call before drawing text.
pub fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in and known to be valid.
        let _ = plotters::style::register_font(FONT, plotters::style::FontStyle::Normal, FONT_BYTES);
    });
}

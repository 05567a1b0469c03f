//! Training data: 28 x 28 images in 10 classes, either the built-in procedural digits
//! (deterministic from the seed) or real MNIST read from its IDX files.
//!
//! The built-in set draws each image from a class template (a few polylines shaped like the
//! digit), then perturbs it: every control point is jittered, the whole glyph is scaled,
//! stretched, sheared, rotated and shifted by up to 2.5 pixels, stroke width and ink vary,
//! strokes are sometimes broken, and speckles and a stray stroke are added. A linear softmax
//! layer learns it well but not perfectly (the shifts and distractors keep it from being
//! trivial), and images of one class are visibly alike (so it is not random).
//!
//! Randomness: image `i` of split `s` reads its own Philox sub-stream
//! `(s << 28) | i` of [`STREAM_TRAIN`], so any image can be regenerated alone and the set
//! does not depend on how many images came before.
//!
//! IDX (LeCun's MNIST format): a big-endian header `00 00 08 n` (unsigned bytes, `n`
//! dimensions), `n` big-endian u32 sizes, then exactly the product of the sizes in bytes.
//! Files may be gzip-compressed (detected by the gzip magic `1f 8b`). They are read as a
//! stream, header first, and never beyond what the header declares nor beyond
//! [`MAX_IDX_ITEMS`] items. Anything else is an [`Error::InvalidData`] naming the file and
//! what is wrong.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::philox::{PhiloxStream, STREAM_TRAIN};

/// Image side in pixels.
pub const SIDE: usize = 28;
/// Input dimension D = 28 x 28.
pub const D: usize = SIDE * SIDE;
/// Number of classes K.
pub const K: usize = 10;

/// Split tags of the Philox sub-streams (`tag << 28 | index`).
const SPLIT_TRAIN: u32 = 0;
const SPLIT_VALIDATION: u32 = 1;
const SPLIT_TEST: u32 = 2;
/// Sub-stream tag of the minibatch order (`tag << 28 | epoch`).
pub(crate) const SPLIT_ORDER: u32 = 3;
/// Images per split must stay below 2^28 so sub-streams never collide.
pub const MAX_IMAGES: usize = 1 << 28;
/// The most images of one split (`--train-size`, `--test-size`) and the most items an IDX
/// file may declare: MNIST has 60 000, EMNIST ByClass about 700 000. A million images take
/// 3.1 GB as the f32 pixels training keeps ([`BYTES_PER_IMAGE`] each).
pub const MAX_SPLIT_IMAGES: usize = 1_000_000;
/// The most items an IDX file may declare.
pub const MAX_IDX_ITEMS: usize = MAX_SPLIT_IMAGES;
/// The most data bytes an IDX file may declare: [`MAX_IDX_ITEMS`] images of 28 x 28.
pub const MAX_IDX_BYTES: usize = MAX_IDX_ITEMS * D;
/// Memory of one image as training holds it: D f32 pixels and K f64 logits.
pub const BYTES_PER_IMAGE: usize = D * 4 + K * 8;

/// A set of labelled images, row-major pixels in [0, 1] (stored as f32: 784 of them each).
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Pixels, `len() x D`.
    pub x: Vec<f32>,
    /// Class labels in `0..K`.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.x[i * D..(i + 1) * D]
    }

    /// The first `n` images (all of them if there are fewer).
    pub fn truncated(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.x.truncate(n * D);
        self.labels.truncate(n);
        self
    }
}

/// The three splits a training run uses: `train` for the steps, `validation` to pick each
/// estimator's learning rate, `test` (held out) for the reported curves.
#[derive(Clone, Debug)]
pub struct Splits {
    /// Where the data came from (`built-in (seed 0)` or the MNIST folder).
    pub source: String,
    /// Training images.
    pub train: Dataset,
    /// Images that pick the learning rate.
    pub validation: Dataset,
    /// Held-out images of the reported curves.
    pub test: Dataset,
}

/// The built-in splits: `n_train`, `n_test` validation and `n_test` test images.
///
/// # Panics
/// If a split has `MAX_IMAGES` images or more.
pub fn builtin(seed: u64, n_train: usize, n_test: usize) -> Splits {
    Splits {
        source: format!("built-in procedural digits (seed {seed})"),
        train: synthetic(seed, SPLIT_TRAIN, n_train),
        validation: synthetic(seed, SPLIT_VALIDATION, n_test),
        test: synthetic(seed, SPLIT_TEST, n_test),
    }
}

/// `n` procedural digit images of split `split`; image `i` has class `i % 10`.
///
/// # Panics
/// If `n >= MAX_IMAGES`.
pub fn synthetic(seed: u64, split: u32, n: usize) -> Dataset {
    assert!(n < MAX_IMAGES, "at most 2^28 images per split");
    let mut x = vec![0f32; n * D];
    let mut labels = Vec::with_capacity(n);
    for (i, img) in x.chunks_mut(D).enumerate() {
        let class = (i % K) as u8;
        let mut rng = PhiloxStream::new(seed, STREAM_TRAIN, (split << 28) | i as u32);
        render_digit(class, &mut rng, img);
        labels.push(class);
    }
    Dataset { x, labels }
}

/// Points of an elliptic arc (unit-box coordinates, y pointing down), angles in radians.
fn arc(cx: f64, cy: f64, rx: f64, ry: f64, a0: f64, a1: f64, n: usize) -> Vec<(f64, f64)> {
    (0..=n)
        .map(|i| {
            let t = a0 + (a1 - a0) * i as f64 / n as f64;
            (cx + rx * t.cos(), cy + ry * t.sin())
        })
        .collect()
}

/// The template of a class: polylines in the unit box, y pointing down.
fn template(class: u8) -> Vec<Vec<(f64, f64)>> {
    use std::f64::consts::PI;
    match class {
        0 => vec![arc(0.5, 0.5, 0.2, 0.3, 0.0, 2.0 * PI, 16)],
        1 => vec![vec![(0.5, 0.2), (0.5, 0.8)], vec![(0.4, 0.3), (0.5, 0.2)]],
        2 => {
            let mut top = arc(0.5, 0.37, 0.18, 0.16, PI, 2.25 * PI, 10);
            top.extend([(0.32, 0.8), (0.7, 0.8)]);
            vec![top]
        }
        3 => vec![
            arc(0.5, 0.35, 0.17, 0.15, -0.85 * PI, 0.5 * PI, 10),
            arc(0.5, 0.64, 0.19, 0.15, -0.5 * PI, 0.85 * PI, 10),
        ],
        4 => vec![
            vec![(0.58, 0.2), (0.3, 0.6), (0.72, 0.6)],
            vec![(0.6, 0.35), (0.6, 0.8)],
        ],
        5 => {
            let mut s = vec![(0.68, 0.2), (0.38, 0.2), (0.35, 0.47)];
            s.extend(arc(0.5, 0.62, 0.19, 0.17, -0.8 * PI, 0.8 * PI, 10));
            vec![s]
        }
        6 => vec![
            vec![(0.64, 0.2), (0.46, 0.32), (0.35, 0.5), (0.33, 0.65)],
            arc(0.5, 0.64, 0.17, 0.16, 0.0, 2.0 * PI, 14),
        ],
        7 => vec![vec![(0.3, 0.2), (0.7, 0.2), (0.45, 0.8)]],
        8 => vec![
            arc(0.5, 0.34, 0.14, 0.14, 0.0, 2.0 * PI, 12),
            arc(0.5, 0.65, 0.17, 0.16, 0.0, 2.0 * PI, 14),
        ],
        _ => vec![
            arc(0.5, 0.36, 0.16, 0.15, 0.0, 2.0 * PI, 14),
            vec![(0.66, 0.38), (0.6, 0.8)],
        ],
    }
}

/// Distance from point `p` to segment `a b`.
fn segment_distance(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (qx * qx + qy * qy).sqrt()
}

/// Draws an anti-aliased stroke of half-width `hw` pixels and ink `ink` into `img` (max blend).
fn draw_segment(img: &mut [f32], a: (f64, f64), b: (f64, f64), hw: f64, ink: f64) {
    let reach = hw + 1.0;
    let side = SIDE as f64;
    let c0 = (a.0.min(b.0) - reach).floor().max(0.0) as usize;
    let c1 = (a.0.max(b.0) + reach).ceil().min(side - 1.0).max(0.0) as usize;
    let r0 = (a.1.min(b.1) - reach).floor().max(0.0) as usize;
    let r1 = (a.1.max(b.1) + reach).ceil().min(side - 1.0).max(0.0) as usize;
    for r in r0..=r1 {
        for c in c0..=c1 {
            let d = segment_distance((c as f64 + 0.5, r as f64 + 0.5), a, b);
            let v = (ink * (hw + 0.5 - d).clamp(0.0, 1.0)) as f32;
            let px = &mut img[r * SIDE + c];
            *px = px.max(v);
        }
    }
}

/// Renders one perturbed digit of class `class` into `img` (784 pixels, zeroed first).
fn render_digit(class: u8, rng: &mut PhiloxStream, img: &mut [f32]) {
    img.iter_mut().for_each(|p| *p = 0.0);
    let u = |lo: f64, hi: f64, rng: &mut PhiloxStream| lo + (hi - lo) * rng.next_f64();
    // Affine map from the unit box to pixels: 30 pixels a unit, centred at (14, 14), so a
    // glyph (about 0.6 units tall) spans about 18 pixels, as in MNIST.
    let scale = u(0.8, 1.1, rng);
    let aspect = u(0.8, 1.2, rng);
    let shear = u(-0.25, 0.25, rng);
    let angle = 0.15 * rng.next_normal();
    let shift = (u(-2.5, 2.5, rng), u(-2.5, 2.5, rng));
    let (sin, cos) = angle.sin_cos();
    let hw = u(0.7, 1.6, rng);
    let ink = u(0.7, 1.0, rng);
    let map = |p: (f64, f64)| {
        let (x, y) = (
            (p.0 - 0.5) * 30.0 * scale * aspect,
            (p.1 - 0.5) * 30.0 * scale,
        );
        let x = x + shear * y;
        (
            14.0 + shift.0 + cos * x - sin * y,
            14.0 + shift.1 + sin * x + cos * y,
        )
    };
    for line in template(class) {
        let pts: Vec<(f64, f64)> = line
            .iter()
            .map(|&(x, y)| map((x + 0.025 * rng.next_normal(), y + 0.025 * rng.next_normal())))
            .collect();
        for seg in pts.windows(2) {
            draw_segment(img, seg[0], seg[1], hw, ink);
        }
    }
    // A stray stroke, one time in five.
    if rng.next_f64() < 0.2 {
        let a = (u(2.0, 26.0, rng), u(2.0, 26.0, rng));
        let b = (a.0 + u(-6.0, 6.0, rng), a.1 + u(-6.0, 6.0, rng));
        draw_segment(img, a, b, 0.8, u(0.4, 0.9, rng));
    }
    // A broken stroke, one time in four: erase a disk of radius 1.5-2.5 px at an inked pixel.
    if rng.next_f64() < 0.25 {
        let inked: Vec<usize> = (0..D).filter(|&i| img[i] > 0.5).collect();
        if !inked.is_empty() {
            let centre = inked[rng.next_below(inked.len() as u32) as usize];
            let (cr, cc) = ((centre / SIDE) as f64, (centre % SIDE) as f64);
            let radius = u(1.5, 2.5, rng);
            for (i, px) in img.iter_mut().enumerate() {
                let (r, c) = ((i / SIDE) as f64, (i % SIDE) as f64);
                if (r - cr).hypot(c - cc) <= radius {
                    *px = 0.0;
                }
            }
        }
    }
    // Ink noise on the strokes and a few speckles.
    for px in img.iter_mut().filter(|p| **p > 0.0) {
        *px = (f64::from(*px) * (1.0 + 0.1 * rng.next_normal())).clamp(0.0, 1.0) as f32;
    }
    for _ in 0..rng.next_below(7) {
        let i = rng.next_below(D as u32) as usize;
        img[i] = img[i].max(u(0.2, 0.8, rng) as f32);
    }
}

/// A parsed IDX file: its dimensions and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Sizes of the dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The data, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

fn invalid(path: &Path, message: impl Into<String>) -> Error {
    Error::InvalidData {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Parses the bytes of an IDX file of unsigned bytes (gzip-compressed or not), as
/// [`read_idx_from`] does.
///
/// # Errors
/// As [`read_idx_from`].
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<Idx> {
    read_idx_from(path, bytes)
}

/// Reads as many bytes as `buf` holds, fewer only at the end of the stream.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads an IDX stream of unsigned bytes, gzip-compressed or not (detected by the gzip magic
/// `1f 8b`). The header is read and checked first; then exactly the data bytes it declares
/// are read (a stream that inflates to more is refused as soon as one byte too many comes),
/// and never more than [`MAX_IDX_ITEMS`] items or [`MAX_IDX_BYTES`] bytes, so a crafted or
/// corrupted file can neither make it allocate what the header claims nor inflate without
/// bound.
///
/// # Errors
/// [`Error::InvalidData`] (naming `path`) for a corrupt gzip stream, a wrong magic number, an
/// element type other than unsigned bytes, a header over the limits, or a data size that
/// disagrees with the header; [`Error::Read`] if the (uncompressed) stream cannot be read.
pub fn read_idx_from(path: &Path, reader: impl Read) -> Result<Idx> {
    let mut reader = std::io::BufReader::new(reader);
    let gz = {
        let mut magic = [0u8; 2];
        let head = std::io::BufRead::fill_buf(&mut reader).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let n = head.len().min(2);
        magic[..n].copy_from_slice(&head[..n]);
        magic == [0x1f, 0x8b]
    };
    if gz {
        read_idx_stream(path, flate2::read::MultiGzDecoder::new(reader), true)
    } else {
        read_idx_stream(path, reader, false)
    }
}

fn read_idx_stream(path: &Path, mut reader: impl Read, gz: bool) -> Result<Idx> {
    let failed = |e: std::io::Error| {
        if gz {
            invalid(
                path,
                format!("the gzip stream is corrupt or truncated ({e})"),
            )
        } else {
            Error::Read {
                path: path.to_owned(),
                source: e,
            }
        }
    };
    let mut head = [0u8; 4];
    let got = read_up_to(&mut reader, &mut head).map_err(failed)?;
    if got < 4 {
        return Err(invalid(
            path,
            format!("{got} bytes: too short for an IDX header"),
        ));
    }
    if head[0] != 0 || head[1] != 0 {
        return Err(invalid(
            path,
            format!(
                "bad magic number {:02x} {:02x} {:02x} {:02x} (an IDX file starts with 00 00)",
                head[0], head[1], head[2], head[3]
            ),
        ));
    }
    if head[2] != 0x08 {
        return Err(invalid(
            path,
            format!(
                "element type 0x{:02x}: only unsigned bytes (0x08) are supported",
                head[2]
            ),
        ));
    }
    let ndims = usize::from(head[3]);
    if ndims == 0 {
        return Err(invalid(path, "the header declares 0 dimensions"));
    }
    let mut sizes = vec![0u8; 4 * ndims];
    if read_up_to(&mut reader, &mut sizes).map_err(failed)? < sizes.len() {
        return Err(invalid(
            path,
            format!(
                "truncated header: {ndims} dimensions need {} bytes",
                4 + 4 * ndims
            ),
        ));
    }
    let dims: Vec<usize> = sizes
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if dims[0] > MAX_IDX_ITEMS {
        return Err(invalid(
            path,
            format!(
                "the header {dims:?} declares {} items, more than the {MAX_IDX_ITEMS} this reader accepts",
                dims[0]
            ),
        ));
    }
    let expected = match dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b)) {
        Some(n) if n <= MAX_IDX_BYTES => n,
        Some(n) => {
            return Err(invalid(
                path,
                format!(
                    "the header {dims:?} declares {n} data bytes, more than the {MAX_IDX_BYTES} \
                     ({MAX_IDX_ITEMS} images of 28 x 28) this reader accepts"
                ),
            ))
        }
        None => return Err(invalid(path, format!("the sizes {dims:?} overflow"))),
    };
    // Grows with what arrives: a header that lies about a short file allocates nothing more.
    let mut data = Vec::with_capacity(expected.min(1 << 20));
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(failed)?;
    match data.len() {
        n if n == expected => Ok(Idx { dims, data }),
        n if n < expected => Err(invalid(
            path,
            format!("truncated: the header {dims:?} needs {expected} data bytes, the file has {n}"),
        )),
        _ => Err(invalid(
            path,
            format!("trailing bytes after the {expected} data bytes of the header {dims:?}"),
        )),
    }
}

/// Reads an IDX file, streaming (see [`read_idx_from`]).
///
/// # Errors
/// [`Error::Read`] if it cannot be opened or read, else as [`read_idx_from`].
pub fn read_idx(path: &Path) -> Result<Idx> {
    let file = std::fs::File::open(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    read_idx_from(path, file)
}

/// Reads an MNIST image file: three dimensions, 28 x 28 images, pixels scaled to [0, 1].
///
/// # Errors
/// As [`read_idx`], plus [`Error::InvalidData`] for other shapes.
pub fn read_mnist_images(path: &Path) -> Result<Vec<f32>> {
    let idx = read_idx(path)?;
    if idx.dims.len() != 3 || idx.dims[1] != SIDE || idx.dims[2] != SIDE {
        return Err(invalid(
            path,
            format!(
                "expected images of shape [n, 28, 28] (magic 00 00 08 03), found {:?}",
                idx.dims
            ),
        ));
    }
    Ok(idx.data.iter().map(|&b| f32::from(b) / 255.0).collect())
}

/// Reads an MNIST label file: one dimension, labels in `0..10`.
///
/// # Errors
/// As [`read_idx`], plus [`Error::InvalidData`] for other shapes or labels above 9.
pub fn read_mnist_labels(path: &Path) -> Result<Vec<u8>> {
    let idx = read_idx(path)?;
    if idx.dims.len() != 1 {
        return Err(invalid(
            path,
            format!(
                "expected labels of shape [n] (magic 00 00 08 01), found {:?}",
                idx.dims
            ),
        ));
    }
    if let Some(i) = idx.data.iter().position(|&l| usize::from(l) >= K) {
        return Err(invalid(
            path,
            format!("label {} of item {i} is not a class 0-9", idx.data[i]),
        ));
    }
    Ok(idx.data)
}

/// Finds `stem` in `dir` under its usual names: `train-images-idx3-ubyte` (LeCun's) and
/// `train-images.idx3-ubyte` (as some mirrors spell it), each with or without `.gz`.
fn find_mnist_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    let mut tried: Vec<String> = Vec::new();
    for name in [stem.to_string(), dotted] {
        for candidate in [name.clone(), format!("{name}.gz")] {
            let path = dir.join(&candidate);
            if path.is_file() {
                return Ok(path);
            }
            if !tried.contains(&candidate) {
                tried.push(candidate);
            }
        }
    }
    Err(Error::Read {
        path: dir.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no MNIST file found (tried {})", tried.join(", ")),
        ),
    })
}

fn load_pair(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let ipath = find_mnist_file(dir, images)?;
    let lpath = find_mnist_file(dir, labels)?;
    let x = read_mnist_images(&ipath)?;
    let labels = read_mnist_labels(&lpath)?;
    if x.len() != labels.len() * D {
        return Err(invalid(
            &lpath,
            format!(
                "{} labels for {} images in {}",
                labels.len(),
                x.len() / D,
                ipath.display()
            ),
        ));
    }
    Ok(Dataset { x, labels })
}

/// Loads MNIST from `dir` (the four standard files, gzip or not). The last
/// `min(5000, n / 10)` training images become the validation split; `t10k` is the test split.
///
/// # Errors
/// [`Error::Read`] for a missing or unreadable file, [`Error::InvalidData`] for a malformed one.
pub fn load_mnist(dir: &Path) -> Result<Splits> {
    let train = load_pair(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?;
    let test = load_pair(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?;
    let n_val = (train.len() / 10).min(5000);
    let n_fit = train.len() - n_val;
    if n_fit == 0 || test.is_empty() {
        return Err(invalid(
            dir,
            "the MNIST files hold too few images to train and test",
        ));
    }
    let validation = Dataset {
        x: train.x[n_fit * D..].to_vec(),
        labels: train.labels[n_fit..].to_vec(),
    };
    Ok(Splits {
        source: format!("MNIST from {}", dir.display()),
        train: train.truncated(n_fit),
        validation,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_deterministic_and_inked() {
        let a = synthetic(3, SPLIT_TRAIN, 20);
        let b = synthetic(3, SPLIT_TRAIN, 20);
        assert_eq!(a, b);
        for i in 0..20 {
            let ink: f32 = a.image(i).iter().sum();
            assert!((20.0..300.0).contains(&ink), "image {i} ink {ink}");
        }
        assert_ne!(a, synthetic(4, SPLIT_TRAIN, 20));
    }

    #[test]
    fn idx_round_trip() {
        let mut bytes = vec![0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend(1..=6u8);
        let idx = parse_idx(Path::new("x"), &bytes).unwrap();
        assert_eq!(idx.dims, vec![2, 3]);
        assert_eq!(idx.data, (1..=6).collect::<Vec<u8>>());
    }
}

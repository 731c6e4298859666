//! Image preprocessing: bytes → RGB8 image → normalised `f32` tensor.
//!
//! Pure functions, no I/O. [`Preprocess::decode`] sniffs the format from the
//! content, refuses absurd dimensions before allocating pixel memory, applies
//! the EXIF orientation and converts every colour type to RGB8.
//! [`Preprocess::to_tensor`] resizes with [`crate::resize`], which reproduces
//! PIL's `Image.resize(size, filter)` bit for bit for the bilinear (default),
//! nearest and bicubic filters (checked against PIL by the `oracle` tests),
//! and writes `x * scale + offset`.

use std::cell::RefCell;
use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::imgconv::{into_rgb8_over_white, jpeg_is_truncated, map_image_error};
use crate::resize::{Filter, Resampler};

/// Largest tensor side accepted by [`Preprocess::new`].
pub const MAX_TENSOR_SIDE: u32 = 4096;

/// Default pixel budget for decoded images: 100 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// Memory layout of the tensor written by [`Preprocess::to_tensor`]: the run's
/// `spec.model.input.layout`, one type for the resource, the command line and the runner.
pub use pomona_crds::TensorLayout as Layout;

/// Why an image could not be turned into pixels.
///
/// The `Display` strings are short and stable: they are written verbatim to
/// the "reason" column of the dead-letter file. Only the text after the colon
/// of `Corrupt` and `Unsupported` comes from the decoder and may vary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input has zero bytes.
    #[error("empty file")]
    Empty,
    /// The content matches no known image signature (e.g. text named `.jpg`).
    #[error("unknown image format")]
    UnknownFormat,
    /// The content is a recognised image format that is not enabled (e.g. GIF).
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    /// The format is supported but one of its features is not (e.g. 12-bit JPEG).
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The header or the pixel data is damaged or cut short.
    #[error("truncated or corrupt image: {0}")]
    Corrupt(String),
    /// The header declares more pixels than allowed; nothing was allocated.
    #[error("image too large: {width}x{height} exceeds {max_pixels} pixels")]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The configured limit ([`Preprocess::max_pixels`]).
        max_pixels: u64,
    },
    /// The decoder stopped at a size or memory limit before reporting the dimensions.
    #[error("image too large: {0}")]
    LimitExceeded(String),
}

/// Invalid [`Preprocess`] configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tensor size {width}x{height}: each side must be in 1..={MAX_TENSOR_SIDE}")]
pub struct ConfigError {
    /// Requested width.
    pub width: u32,
    /// Requested height.
    pub height: u32,
}

/// Preprocessing parameters: output size, layout and normalisation.
///
/// `Default` is MobileNetV2: 224×224, NHWC, `x / 127.5 - 1`, bilinear resizing, 100 megapixel
/// limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    width: u32,
    height: u32,
    layout: Layout,
    scale: f32,
    offset: f32,
    filter: Filter,
    max_pixels: u64,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            width: 224,
            height: 224,
            layout: Layout::NHWC,
            scale: 1.0 / 127.5,
            offset: -1.0,
            filter: Filter::Bilinear,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// Per-thread scratch for [`Preprocess::to_tensor`]: the resampler keeps its
/// weights and intermediate rows, `pixels` holds the resized RGB8 image.
#[derive(Default)]
struct Scratch {
    resampler: Resampler,
    pixels: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Preprocess {
    /// MobileNetV2 normalisation and layout with a custom output size.
    pub fn new(width: u32, height: u32) -> Result<Self, ConfigError> {
        if !(1..=MAX_TENSOR_SIDE).contains(&width) || !(1..=MAX_TENSOR_SIDE).contains(&height) {
            return Err(ConfigError { width, height });
        }
        Ok(Self {
            width,
            height,
            ..Self::default()
        })
    }

    /// Sets the tensor layout.
    #[must_use]
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the normalisation `x * scale + offset` (x in 0..=255).
    #[must_use]
    pub fn with_normalization(mut self, scale: f32, offset: f32) -> Self {
        self.scale = scale;
        self.offset = offset;
        self
    }

    /// Sets the resize filter (PIL's nearest, bilinear or bicubic).
    #[must_use]
    pub fn with_filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Sets the largest accepted `width * height` of a decoded image.
    #[must_use]
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels.max(1);
        self
    }

    /// Output width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Output height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Tensor layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Resize filter.
    pub fn filter(&self) -> Filter {
        self.filter
    }

    /// Normalisation scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Normalisation offset.
    pub fn offset(&self) -> f32 {
        self.offset
    }

    /// Largest accepted `width * height` of a decoded image.
    pub fn max_pixels(&self) -> u64 {
        self.max_pixels
    }

    /// Number of `f32` values per image: `width * height * 3`.
    pub fn tensor_len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    /// Decodes JPEG, PNG or WebP bytes (format sniffed from the content) to RGB8.
    ///
    /// The dimensions are read from the header and checked against
    /// [`max_pixels`](Self::max_pixels) before any pixel buffer is allocated.
    /// EXIF orientation is applied. Grayscale, 16-bit and CMYK inputs are
    /// converted to RGB8. Images with alpha are composited over **white**:
    /// the colour under fully transparent pixels is arbitrary (often black),
    /// so dropping alpha would turn the background of a cut-out product photo
    /// into noise or black, while photos of isolated objects (Fruits-360,
    /// catalogues) are shot on white, which is what the model has seen.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let format = reader.format().ok_or(DecodeError::UnknownFormat)?;
        if !matches!(
            format,
            ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
        ) {
            let name = format.extensions_str().first().copied().unwrap_or("?");
            return Err(DecodeError::UnsupportedFormat(name.to_string()));
        }
        if format == ImageFormat::Jpeg && jpeg_is_truncated(bytes) {
            return Err(DecodeError::Corrupt(
                "missing end of image (JPEG EOI marker)".into(),
            ));
        }
        let mut reader = reader;
        reader.limits(self.limits());
        // Only the header is parsed here; pixel buffers come later.
        let mut decoder = reader.into_decoder().map_err(map_image_error)?;
        let (width, height) = decoder.dimensions();
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(DecodeError::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        if width == 0 || height == 0 {
            return Err(DecodeError::Corrupt(format!(
                "zero dimension {width}x{height}"
            )));
        }
        // A broken EXIF block must not cost the image: fall back to no rotation.
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
        img.apply_orientation(orientation);
        Ok(into_rgb8_over_white(img))
    }

    /// Resizes `img` to `width × height` (with the filter, PIL-compatible) and writes
    /// `x * scale + offset` into `out` in the configured layout.
    ///
    /// Allocation-free in steady state: the resizer and the resized pixels
    /// live in a per-thread scratch buffer that is reused across calls. An
    /// image that already has the target size is not resampled. An empty
    /// (0-pixel) image yields a tensor filled with `offset` (black).
    ///
    /// # Panics
    /// If `out.len() != self.tensor_len()` (a caller bug, not a data error).
    pub fn to_tensor(&self, img: &RgbImage, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.tensor_len(),
            "to_tensor: output slice has the wrong length"
        );
        if img.width() == 0 || img.height() == 0 {
            out.fill(self.offset);
            return;
        }
        if img.dimensions() == (self.width, self.height) {
            self.normalize(img.as_raw(), out);
            return;
        }
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let Scratch { resampler, pixels } = &mut *scratch;
            self.resize_into(resampler, img, pixels);
            self.normalize(pixels, out);
        });
    }

    /// Resizes `img` to the target size and returns the RGB8 pixels
    /// (row-major, `width * height * 3` bytes). Same resampling as
    /// [`to_tensor`](Self::to_tensor); used to compare with PIL.
    pub fn resize_rgb8(&self, img: &RgbImage) -> Vec<u8> {
        if img.width() == 0 || img.height() == 0 {
            return vec![0; self.tensor_len()];
        }
        if img.dimensions() == (self.width, self.height) {
            return img.as_raw().clone();
        }
        let mut pixels = Vec::new();
        self.resize_into(&mut Resampler::with_filter(self.filter), img, &mut pixels);
        pixels
    }

    fn resize_into(&self, resampler: &mut Resampler, img: &RgbImage, pixels: &mut Vec<u8>) {
        if resampler.filter() != self.filter {
            *resampler = Resampler::with_filter(self.filter);
        }
        pixels.resize(self.tensor_len(), 0);
        let (w, h) = img.dimensions();
        resampler.resize(img.as_raw(), w, h, pixels, self.width, self.height);
    }

    fn normalize(&self, pixels: &[u8], out: &mut [f32]) {
        let (scale, offset) = (self.scale, self.offset);
        match self.layout {
            Layout::NHWC => {
                for (o, &p) in out.iter_mut().zip(pixels) {
                    *o = f32::from(p) * scale + offset;
                }
            }
            Layout::NCHW => {
                let plane = self.width as usize * self.height as usize;
                let (r, rest) = out.split_at_mut(plane);
                let (g, b) = rest.split_at_mut(plane);
                for (i, px) in pixels.chunks_exact(3).enumerate() {
                    r[i] = f32::from(px[0]) * scale + offset;
                    g[i] = f32::from(px[1]) * scale + offset;
                    b[i] = f32::from(px[2]) * scale + offset;
                }
            }
        }
    }

    fn limits(&self) -> Limits {
        let side = u32::try_from(self.max_pixels).unwrap_or(u32::MAX);
        let mut limits = Limits::default();
        // A single side above max_pixels can never fit; refusing it here keeps
        // decoders from sizing even one row after an absurd header.
        limits.max_image_width = Some(side);
        limits.max_image_height = Some(side);
        // Largest decoded buffer is 16-bit RGBA (8 bytes/pixel), plus slack
        // for decoder-internal tables.
        limits.max_alloc = Some(self.max_pixels.saturating_mul(8).saturating_add(64 << 20));
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_mobilenet_v2() {
        let p = Preprocess::default();
        assert_eq!(
            (p.width(), p.height(), p.layout()),
            (224, 224, Layout::NHWC)
        );
        assert_eq!(p.tensor_len(), 224 * 224 * 3);
        assert!((255.0 * p.scale() + p.offset() - 1.0).abs() < 1e-6);
        assert_eq!(p.offset(), -1.0);
    }

    #[test]
    fn config_rejects_zero_and_huge_sizes() {
        assert!(Preprocess::new(0, 224).is_err());
        assert!(Preprocess::new(224, MAX_TENSOR_SIDE + 1).is_err());
        assert!(Preprocess::new(160, 128).is_ok());
    }

    #[test]
    fn layouts_place_channels_correctly() {
        // 2x1 image, no resize: pixels (0,128,255) and (255,0,128).
        let img = RgbImage::from_raw(2, 1, vec![0, 128, 255, 255, 0, 128]).unwrap();
        let p = Preprocess::new(2, 1).unwrap().with_normalization(1.0, 0.0);
        let mut out = vec![0.0; 6];
        p.to_tensor(&img, &mut out);
        assert_eq!(out, [0.0, 128.0, 255.0, 255.0, 0.0, 128.0]);
        let p = p.with_layout(Layout::NCHW);
        p.to_tensor(&img, &mut out);
        assert_eq!(out, [0.0, 255.0, 128.0, 0.0, 255.0, 128.0]);
    }

    #[test]
    fn normalisation_maps_0_255_to_minus1_plus1() {
        let img = RgbImage::from_raw(1, 1, vec![0, 255, 51]).unwrap();
        let p = Preprocess::new(1, 1).unwrap();
        let mut out = vec![0.0; 3];
        p.to_tensor(&img, &mut out);
        assert_eq!(out[0], -1.0);
        assert!((out[1] - 1.0).abs() < 1e-6);
        assert!((out[2] - (51.0 / 127.5 - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn constant_image_stays_constant_after_resize() {
        let img = RgbImage::from_pixel(100, 37, image::Rgb([10, 20, 30]));
        let p = Preprocess::default().with_normalization(1.0, 0.0);
        let mut out = vec![0.0; p.tensor_len()];
        p.to_tensor(&img, &mut out);
        for px in out.chunks_exact(3) {
            assert_eq!(px, [10.0, 20.0, 30.0]);
        }
    }

    #[test]
    fn empty_image_gives_offset_tensor() {
        let p = Preprocess::default();
        let mut out = vec![5.0; p.tensor_len()];
        p.to_tensor(&RgbImage::new(0, 0), &mut out);
        assert!(out.iter().all(|&v| v == -1.0));
    }

    #[test]
    fn error_reasons_are_stable() {
        assert_eq!(DecodeError::Empty.to_string(), "empty file");
        assert_eq!(
            DecodeError::UnknownFormat.to_string(),
            "unknown image format"
        );
        let e = DecodeError::TooLarge {
            width: 100_000,
            height: 100_000,
            max_pixels: 100_000_000,
        };
        assert_eq!(
            e.to_string(),
            "image too large: 100000x100000 exceeds 100000000 pixels"
        );
    }

    #[test]
    fn each_filter_resizes_with_its_own_kernel_on_one_thread() {
        // A gradient upscaled 3 → 8: the three filters give three different images, and
        // switching back and forth on one thread (one scratch resampler) gives each its own.
        let img = RgbImage::from_fn(3, 3, |x, y| {
            image::Rgb([(x * 100) as u8, (y * 100) as u8, 7])
        });
        let tensor = |filter| {
            let p = Preprocess::new(8, 8)
                .unwrap()
                .with_normalization(1.0, 0.0)
                .with_filter(filter);
            let mut out = vec![0.0; p.tensor_len()];
            p.to_tensor(&img, &mut out);
            assert_eq!(
                out.iter().map(|&v| v as u8).collect::<Vec<_>>(),
                p.resize_rgb8(&img),
                "{filter:?}: to_tensor and resize_rgb8 agree"
            );
            out
        };
        let (n, l, c) = (
            tensor(Filter::Nearest),
            tensor(Filter::Bilinear),
            tensor(Filter::Bicubic),
        );
        assert!(n != l && l != c && n != c);
        assert_eq!(tensor(Filter::Nearest), n);
        assert_eq!(tensor(Filter::Bilinear), l);
        // Nearest only copies source values.
        assert!(n.iter().all(|&v| [0.0, 100.0, 200.0, 7.0].contains(&v)));
    }
}

//! Unusual and broken image files, built at run time (no binary is committed): the encoders the
//! decode tests and the pipeline tests share, and the corpus the pipeline must account for.

use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ExtendedColorType, ImageEncoder, Rgb, RgbImage};

/// Which encoder [`encode`] uses.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    /// Baseline JPEG, quality 95.
    Jpeg,
    /// PNG of the image's own colour type.
    Png,
    /// Lossless WebP.
    WebP,
}

/// `img` encoded as `format`. JPEG and WebP take RGB8, PNG any colour type.
pub fn encode(img: &DynamicImage, format: Format) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        Format::Png => img.write_with_encoder(PngEncoder::new(&mut out)).unwrap(),
        Format::Jpeg => write_rgb8(JpegEncoder::new_with_quality(&mut out, 95), img),
        Format::WebP => write_rgb8(WebPEncoder::new_lossless(&mut out), img),
    }
    out
}

/// Writes `img`, converted to RGB8, with `encoder`.
fn write_rgb8(encoder: impl ImageEncoder, img: &DynamicImage) {
    let rgb = img.to_rgb8();
    encoder
        .write_image(
            rgb.as_raw(),
            rgb.width(),
            rgb.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
}

/// 40x20 test card: red 8x8 block at the top-left, blue elsewhere.
pub fn card() -> RgbImage {
    RgbImage::from_fn(40, 20, |x, y| {
        if x < 8 && y < 8 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

/// Inserts an APP1/Exif segment with one IFD0 entry, Orientation = `value`,
/// right after SOI (built by hand: big-endian TIFF header, one SHORT entry).
pub fn with_exif_orientation(jpeg: &[u8], value: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\x00\x2a\x00\x00\x00\x08"); // header, IFD0 at 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count
    tiff.extend_from_slice(&value.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let payload = [b"Exif\x00\x00".as_slice(), &tiff].concat();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    c.extend_from_slice(&crc32(&[kind.as_slice(), data].concat()).to_be_bytes());
    c
}

/// Valid PNG signature + IHDR (8-bit RGB, `w`x`h`) + a tiny IDAT + IEND: a decompression bomb
/// when `w`x`h` is large.
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend(chunk(b"IHDR", &ihdr));
    b.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    b.extend(chunk(b"IEND", &[]));
    b
}

/// What the pipeline must make of a corpus file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A feature row.
    Features,
    /// A dead letter whose reason starts with this.
    DeadLetter(&'static str),
}

/// The bad-file corpus of the extractor issue, made from the real JPEG `real`: every file the
/// pipeline must turn into a feature or a dead letter with its reason, never a crash. The CMYK
/// JPEG is written by PIL through the Python oracle.
pub fn bad_file_corpus(real: &[u8], scratch: &Path) -> Vec<(&'static str, Vec<u8>, Expect)> {
    let decoded = image::load_from_memory(real).unwrap();
    let rgba = DynamicImage::ImageRgba8(decoded.to_rgba8());
    let sixteen = DynamicImage::ImageRgb16(decoded.to_rgb16());
    let exif = with_exif_orientation(&encode(&decoded, Format::Jpeg), 6);
    std::fs::create_dir_all(scratch).unwrap();
    let source = scratch.join("source.jpg");
    let cmyk = scratch.join("cmyk.jpg");
    std::fs::write(&source, real).unwrap();
    super::run_oracle(&[
        "--make-cmyk",
        source.to_str().unwrap(),
        cmyk.to_str().unwrap(),
    ]);
    vec![
        (
            "zero-bytes.jpg",
            Vec::new(),
            Expect::DeadLetter("empty file"),
        ),
        (
            "text-named.jpg",
            b"this is not an image\n".to_vec(),
            Expect::DeadLetter("unknown image format"),
        ),
        (
            "truncated.jpg",
            real[..real.len() / 2].to_vec(),
            Expect::DeadLetter("truncated or corrupt image"),
        ),
        (
            "bomb.png",
            png_header(100_000, 100_000),
            Expect::DeadLetter("image too large"),
        ),
        ("cmyk.jpg", std::fs::read(&cmyk).unwrap(), Expect::Features),
        (
            "sixteen-bit.png",
            encode(&sixteen, Format::Png),
            Expect::Features,
        ),
        ("rgba.png", encode(&rgba, Format::Png), Expect::Features),
        ("exif-rotated.jpg", exif, Expect::Features),
        (
            "lossless.webp",
            encode(&decoded, Format::WebP),
            Expect::Features,
        ),
        ("UPPER.JPG", real.to_vec(), Expect::Features),
    ]
}

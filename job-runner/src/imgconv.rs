//! Private helpers for [`crate::preprocess`]: colour conversion, error
//! mapping and the JPEG truncation check.

use image::error::{ImageError, LimitErrorKind, UnsupportedErrorKind};
use image::{DynamicImage, RgbImage};

use crate::preprocess::DecodeError;

/// Converts any decoded image to RGB8, compositing alpha over white.
pub(crate) fn into_rgb8_over_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return match img {
            DynamicImage::ImageRgb8(rgb) => rgb,
            other => other.into_rgb8(),
        };
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = u32::from(px[3]);
        for &c in &px[..3] {
            // c*a/255 + 255*(255-a)/255, rounded.
            let v = (u32::from(c) * a + 255 * (255 - a) + 127) / 255;
            rgb.push(v as u8);
        }
    }
    RgbImage::from_raw(w, h, rgb).expect("buffer has w*h*3 bytes")
}

/// Keeps decoder details short: first line, at most 120 characters.
fn short(msg: String) -> String {
    let line = msg.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

pub(crate) fn map_image_error(err: ImageError) -> DecodeError {
    match err {
        ImageError::Limits(e) => match e.kind() {
            LimitErrorKind::DimensionError => {
                DecodeError::LimitExceeded("a side exceeds the pixel limit".into())
            }
            _ => DecodeError::LimitExceeded(short(e.to_string())),
        },
        ImageError::Unsupported(e) => match e.kind() {
            UnsupportedErrorKind::Format(_) => DecodeError::UnknownFormat,
            _ => DecodeError::Unsupported(short(e.to_string())),
        },
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Corrupt("unexpected end of file".into())
        }
        other => DecodeError::Corrupt(short(other.to_string())),
    }
}

/// True when a JPEG's marker structure is readable but no EOI (`FF D9`)
/// follows the first start-of-scan. Such files are cut short; the lenient
/// decoder would otherwise fill the missing part with grey and return a
/// plausible-looking image with bogus features.
///
/// `FF D9` cannot occur inside entropy-coded data (a literal `FF` is stuffed
/// as `FF 00`), and an EXIF thumbnail's EOI sits inside APP1, before SOS.
/// Data appended after EOI (e.g. motion-photo trailers) is accepted.
/// Structures this walk does not understand are left to the decoder.
pub(crate) fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    loop {
        if pos >= bytes.len() {
            return true; // ran out before the scan data
        }
        if bytes[pos] != 0xFF {
            return false; // unexpected structure: let the decoder judge
        }
        while pos < bytes.len() && bytes[pos] == 0xFF {
            pos += 1; // fill bytes
        }
        let Some(&marker) = bytes.get(pos) else {
            return true;
        };
        pos += 1;
        match marker {
            0xDA => {
                let scan = &bytes[pos.min(bytes.len())..];
                return !scan.windows(2).rev().any(|w| w == [0xFF, 0xD9]);
            }
            0xD9 => return false, // EOI before any scan: decoder will complain
            0x01 | 0xD0..=0xD7 => {}
            _ => {
                let Some(len) = bytes.get(pos..pos + 2) else {
                    return true;
                };
                pos += usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_composites_over_white() {
        let rgba =
            image::RgbaImage::from_raw(3, 1, vec![0, 0, 0, 0, 200, 100, 50, 255, 0, 0, 0, 128])
                .unwrap();
        let rgb = into_rgb8_over_white(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.as_raw(), &[255, 255, 255, 200, 100, 50, 127, 127, 127]);
    }

    #[test]
    fn jpeg_truncation_walk() {
        // SOI, APP0 (len 4), SOS (len 2), data, EOI
        let full = [
            0xFF, 0xD8, 0xFF, 0xE0, 0, 4, 1, 2, 0xFF, 0xDA, 0, 2, 9, 9, 0xFF, 0xD9,
        ];
        assert!(!jpeg_is_truncated(&full));
        assert!(jpeg_is_truncated(&full[..14]));
        assert!(jpeg_is_truncated(&full[..5]));
        // EOI inside an APP segment (thumbnail) does not count.
        let thumb = [
            0xFF, 0xD8, 0xFF, 0xE1, 0, 4, 0xFF, 0xD9, 0xFF, 0xDA, 0, 2, 1,
        ];
        assert!(jpeg_is_truncated(&thumb));
    }

    #[test]
    fn short_caps_length() {
        assert!(short("x".repeat(500)).chars().count() <= 121);
    }
}

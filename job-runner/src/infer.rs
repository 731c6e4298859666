//! ONNX Runtime inference for feature-extractor models (`[N,H,W,3] → [N,D]`).
//!
//! The runtime is loaded at run time from a shared library
//! ([`init_runtime`]); a missing library is an error with instructions,
//! never a panic. Tensors are passed as plain slices, no `ndarray`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorRef, ValueType};
use sha2::{Digest, Sha256};

use crate::preprocess::Layout;

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// How to obtain the ONNX Runtime library; appended to load errors.
pub const ORT_HELP: &str = "get it with `pip download --no-deps --only-binary=:all: \
--python-version 3.11 onnxruntime==1.32.0 -d DIR && unzip -j DIR/onnxruntime-1.32.0-*.whl \
'onnxruntime/capi/libonnxruntime.so*' -d DIR/lib` (or the project's install script) and set \
ORT_DYLIB_PATH=DIR/lib/libonnxruntime.so.1.32.0";

/// Errors from loading the runtime or a model, or from running it.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Neither an explicit path nor `ORT_DYLIB_PATH` was given.
    #[error("ONNX Runtime library not configured: {ORT_HELP}")]
    RuntimeNotConfigured,
    /// The library path does not exist or could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {reason}; {ORT_HELP}")]
    RuntimeLoad {
        /// Path that was tried.
        path: PathBuf,
        /// Loader message.
        reason: String,
    },
    /// [`Model::load`] was called before [`init_runtime`].
    #[error("ONNX Runtime is not initialised: call init_runtime first")]
    NotInitialised,
    /// The model file could not be read.
    #[error("cannot read model {path}: {source}")]
    ModelRead {
        /// Model path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The model does not have the expected interface.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The batch slice does not hold `n` images of the model's input size.
    #[error("batch has {got} values, expected {expected} ({n} images of {per_image})")]
    BadBatch {
        /// Values given.
        got: usize,
        /// Values expected.
        expected: usize,
        /// Images requested.
        n: usize,
        /// Values per image.
        per_image: usize,
    },
    /// An error reported by ONNX Runtime.
    #[error("onnx runtime: {0}")]
    Ort(#[from] ort::Error),
}

impl From<ort::Error<SessionBuilder>> for InferError {
    fn from(e: ort::Error<SessionBuilder>) -> Self {
        InferError::Ort(e.into())
    }
}

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads the ONNX Runtime shared library and creates the process-wide environment.
///
/// The path is `dylib` if given, else the `ORT_DYLIB_PATH` environment
/// variable. Idempotent: later calls return `Ok(())` once a runtime is loaded
/// (one runtime per process; a different path is then ignored).
pub fn init_runtime(dylib: Option<&Path>) -> Result<(), InferError> {
    let mut env = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if env.is_some() {
        return Ok(());
    }
    let path = match dylib {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(ORT_DYLIB_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or(InferError::RuntimeNotConfigured)?,
    };
    if !path.is_file() {
        return Err(InferError::RuntimeLoad {
            path,
            reason: "no such file".into(),
        });
    }
    let builder = ort::init_from(&path).map_err(|e| InferError::RuntimeLoad {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    *env = Some(builder.with_name("pomona").with_telemetry(false).build()?);
    Ok(())
}

fn environment() -> Result<Environment, InferError> {
    let env = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    env.clone().ok_or(InferError::NotInitialised)
}

/// Lower-case hex SHA-256 of `bytes` (model checksum).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where to load a model from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    /// An `.onnx` file.
    Path(&'a Path),
    /// The model bytes.
    Bytes(&'a [u8]),
}

impl<'a> From<&'a Path> for ModelSource<'a> {
    fn from(p: &'a Path) -> Self {
        ModelSource::Path(p)
    }
}

impl<'a> From<&'a PathBuf> for ModelSource<'a> {
    fn from(p: &'a PathBuf) -> Self {
        ModelSource::Path(p)
    }
}

impl<'a> From<&'a [u8]> for ModelSource<'a> {
    fn from(b: &'a [u8]) -> Self {
        ModelSource::Bytes(b)
    }
}

/// Options for [`Model::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelOptions {
    /// ONNX Runtime intra-op threads (0 = runtime default, all cores).
    pub intra_threads: usize,
    /// Name of the image input.
    pub input_name: String,
    /// Name of the `[N, D]` feature output.
    pub output_name: String,
    /// Input `(height, width)`; required when the model's H/W are dynamic,
    /// checked against the model when they are fixed.
    pub input_size: Option<(u32, u32)>,
}

impl Default for ModelOptions {
    /// 1 thread, `input` → `features` (the MobileNetV2 feature model).
    fn default() -> Self {
        Self {
            intra_threads: 1,
            input_name: "input".into(),
            output_name: "features".into(),
            input_size: None,
        }
    }
}

/// A loaded feature-extractor session with a reusable output buffer.
#[derive(Debug)]
pub struct Model {
    session: Session,
    input_name: String,
    output_name: String,
    layout: Layout,
    height: u32,
    width: u32,
    dim: usize,
    sha256: String,
    out: Vec<f32>,
}

impl Model {
    /// Loads a model, checks its input/output names and reads the feature
    /// dimension `D` from the output shape `[N, D]`.
    ///
    /// Graph optimisation is `ORT_ENABLE_ALL` (EXTENDED is about 2× slower on
    /// this model); inter-op threads are 1.
    pub fn load<'a>(
        source: impl Into<ModelSource<'a>>,
        options: ModelOptions,
    ) -> Result<Self, InferError> {
        let env = environment()?;
        let owned;
        let bytes: &[u8] = match source.into() {
            ModelSource::Bytes(b) => b,
            ModelSource::Path(p) => {
                owned = std::fs::read(p).map_err(|source| InferError::ModelRead {
                    path: p.to_path_buf(),
                    source,
                })?;
                &owned
            }
        };
        let session = Session::builder(&env)?
            .with_optimization_level(GraphOptimizationLevel::All)?
            .with_intra_threads(options.intra_threads)?
            .with_inter_threads(1)?
            .commit_from_memory(bytes)?;

        let input = find(session.inputs(), &options.input_name, "input")?;
        let in_dims = tensor_dims(input.dtype(), &options.input_name)?;
        let (layout, h, w) = match in_dims {
            [_, h, w, 3] => (Layout::NHWC, *h, *w),
            [_, 3, h, w] => (Layout::NCHW, *h, *w),
            other => {
                return Err(InferError::InvalidModel(format!(
                    "input `{}` has shape {other:?}, expected [N,H,W,3] or [N,3,H,W]",
                    options.input_name
                )));
            }
        };
        let (height, width) = resolve_size(h, w, options.input_size)?;

        let output = find(session.outputs(), &options.output_name, "output")?;
        let dim = match tensor_dims(output.dtype(), &options.output_name)? {
            [_, d] if *d > 0 => *d as usize,
            other => {
                return Err(InferError::InvalidModel(format!(
                    "output `{}` has shape {other:?}, expected [N, D] with fixed D",
                    options.output_name
                )));
            }
        };
        Ok(Self {
            session,
            input_name: options.input_name,
            output_name: options.output_name,
            layout,
            height,
            width,
            dim,
            sha256: sha256_hex(bytes),
            out: Vec::new(),
        })
    }

    /// Feature dimension `D`.
    pub fn feature_dim(&self) -> usize {
        self.dim
    }

    /// Input `(height, width)`.
    pub fn input_size(&self) -> (u32, u32) {
        (self.height, self.width)
    }

    /// Input layout (NHWC for MobileNetV2).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `f32` values per image in the input batch: `H * W * 3`.
    pub fn input_len(&self) -> usize {
        self.height as usize * self.width as usize * 3
    }

    /// Lower-case hex SHA-256 of the model bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Runs `n` images (`batch.len() == n * input_len()`) and returns the
    /// `n × D` features, row-major. The returned slice borrows an internal
    /// buffer that is reused by the next call.
    pub fn run(&mut self, batch: &[f32], n: usize) -> Result<&[f32], InferError> {
        let per_image = self.input_len();
        let expected = n.saturating_mul(per_image);
        if batch.len() != expected {
            return Err(InferError::BadBatch {
                got: batch.len(),
                expected,
                n,
                per_image,
            });
        }
        self.out.clear();
        if n == 0 {
            return Ok(&self.out);
        }
        let (h, w) = (self.height as usize, self.width as usize);
        let shape = match self.layout {
            Layout::NHWC => [n, h, w, 3],
            Layout::NCHW => [n, 3, h, w],
        };
        let tensor = TensorRef::from_array_view((shape, batch))?;
        let name = Cow::Borrowed(self.input_name.as_str());
        let outputs = self.session.run(ort::inputs![name => tensor])?;
        let value = outputs.get(&self.output_name).ok_or_else(|| {
            InferError::InvalidModel(format!("output `{}` missing", self.output_name))
        })?;
        let (out_shape, data) = value.try_extract_tensor::<f32>()?;
        if **out_shape != [n as i64, self.dim as i64] {
            return Err(InferError::InvalidModel(format!(
                "output shape {:?}, expected [{n}, {}]",
                &**out_shape, self.dim
            )));
        }
        self.out.extend_from_slice(data);
        Ok(&self.out)
    }
}

fn find<'s>(
    outlets: &'s [ort::value::Outlet],
    name: &str,
    what: &str,
) -> Result<&'s ort::value::Outlet, InferError> {
    outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        InferError::InvalidModel(format!("no {what} named `{name}`; the model has {names:?}"))
    })
}

fn tensor_dims<'v>(dtype: &'v ValueType, name: &str) -> Result<&'v [i64], InferError> {
    match dtype {
        ValueType::Tensor { ty, shape, .. } if *ty == ort::value::TensorElementType::Float32 => {
            Ok(shape)
        }
        other => Err(InferError::InvalidModel(format!(
            "`{name}` is {other:?}, expected a float32 tensor"
        ))),
    }
}

/// Combines the model's H/W (-1 if symbolic) with the requested size.
fn resolve_size(h: i64, w: i64, wanted: Option<(u32, u32)>) -> Result<(u32, u32), InferError> {
    let fixed = |v: i64| u32::try_from(v).ok().filter(|&v| v > 0);
    match ((fixed(h), fixed(w)), wanted) {
        ((Some(mh), Some(mw)), None) => Ok((mh, mw)),
        ((Some(mh), Some(mw)), Some(req)) if req == (mh, mw) => Ok(req),
        ((Some(mh), Some(mw)), Some((rh, rw))) => Err(InferError::InvalidModel(format!(
            "model input is fixed at {mh}x{mw}, options ask for {rh}x{rw}"
        ))),
        ((mh, mw), Some((rh, rw)))
            if rh > 0 && rw > 0 && mh.is_none_or(|v| v == rh) && mw.is_none_or(|v| v == rw) =>
        {
            Ok((rh, rw))
        }
        _ => Err(InferError::InvalidModel(format!(
            "model input size is {h}x{w} (dynamic); set ModelOptions::input_size"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn size_resolution() {
        assert_eq!(resolve_size(224, 224, None).unwrap(), (224, 224));
        assert_eq!(
            resolve_size(224, 224, Some((224, 224))).unwrap(),
            (224, 224)
        );
        assert!(resolve_size(224, 224, Some((160, 160))).is_err());
        assert_eq!(resolve_size(-1, -1, Some((160, 128))).unwrap(), (160, 128));
        assert!(resolve_size(-1, -1, None).is_err());
    }

    #[test]
    fn missing_library_is_an_error_not_a_panic() {
        let err = init_runtime(Some(Path::new("/nonexistent/libonnxruntime.so")));
        // If another test in this process already loaded the runtime the call
        // is a no-op; otherwise it must fail with instructions.
        if let Err(e) = err {
            let msg = e.to_string();
            assert!(
                msg.contains("ORT_DYLIB_PATH") && msg.contains("pip download"),
                "{msg}"
            );
        }
    }
}

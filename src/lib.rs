//! edgerun: an adaptive inference runtime for edge devices.
//!
//! The crate is laid out by concern, following a model -> optimized plan -> run pipeline:
//!
//! - [`engine`]: loads ONNX files into runnable plans and runs them on `ndarray` tensors
//!   (tract today; ONNX Runtime fits the same trait).
//! - [`models`]: the model directory and its manifests; verifies every file before use and
//!   reads each service's declared operating points ([`models::PointSet`]).
//! - [`imaging`]: image decoding with size limits and the resampling the models were trained with.
//! - [`mqtt`]: the MQTT transport: embedded broker, topic layout, request envelopes.
//! - [`serve`]: `edgerun serve`, wiring transport, bounded queues, adaptation and services
//!   together; it measures unprofiled services' points in the background ([`serve::learn`]).
//! - [`services`]: what a device serves (scene-text recognition, statute retrieval, image
//!   generation), written against [`engine`] and independent of how requests arrive; each
//!   meets deadlines by stepping down mid-request ([`services::deadline`]).
//! - [`latency`]: latency summaries for telemetry and benchmarks.
//! - [`data`]: the shared benchmark data (`EDGERUN_DATA`), for tests and benchmarks only.
//! - [`bench`]: benchmarks that print a table and write JSON.
//! - [`telemetry`]: live readings of the device (CPU, memory, temperatures, GPU, power).
//! - [`policy`]: operating points, their measured profiles, and the controller that picks
//!   one per request.
//! - [`profiler`]: `edgerun profile`, measuring each operating point on this device.
//! - [`plot`]: SVG charts for benchmarks and profiles.
//! - [`cache`]: where per-device state (profiles, TensorRT engines) is kept.
//! - [`cli`]: command-line parsing, one entry point per subcommand, and the one table of
//!   services ([`cli::registry`]) that `serve`, `profile` and `bench` build them from.

pub mod bench;
pub mod cache;
pub mod cli;
pub mod data;
pub mod engine;
pub mod imaging;
pub mod latency;
pub mod models;
pub mod mqtt;
pub mod plot;
pub mod policy;
pub mod profiler;
pub mod serve;
pub mod services;
pub mod telemetry;

//! edgerun's runtime: what a device runs to serve ONNX models over MQTT, adapting each
//! service's operating point to live telemetry.
//!
//! The crate is laid out by concern, following a model -> optimized plan -> run pipeline.
//! It depends on nothing that only benchmarks use: the benchmarks, their charts and the
//! benchmark data live in `edgerun-bench`, the command line in the `edgerun` package.
//!
//! - [`engine`]: loads ONNX files into runnable plans and runs them on `ndarray` tensors
//!   (tract by default; ONNX Runtime behind the `ort` feature).
//! - [`models`]: the model directory and its manifests; verifies every file before use and
//!   reads each service's declared operating points ([`models::PointSet`]).
//! - [`imaging`]: image decoding with size limits and the resampling the models were trained with.
//! - [`mqtt`]: the MQTT transport: embedded broker, topic layout, request envelopes, a client.
//! - [`serve`]: `edgerun serve`, wiring transport, bounded queues, adaptation and services
//!   together; it measures unprofiled services' points in the background ([`serve::learn`]).
//! - [`services`]: what a device serves (scene-text recognition, statute retrieval, image
//!   generation), written against [`engine`] and independent of how requests arrive; each
//!   meets deadlines by stepping down mid-request ([`services::deadline`]).
//! - [`latency`]: latency summaries for telemetry and benchmarks.
//! - [`telemetry`]: live readings of the device (CPU, memory, temperatures, GPU, power).
//! - [`policy`]: operating points, their measured profiles, and the controller that picks
//!   one per request.
//! - [`profiler`]: measuring each operating point on this device (`edgerun profile`, and
//!   `serve`'s background measurement).
//! - [`cache`]: where per-device state (profiles, TensorRT engines) is kept.

pub mod allocator;
pub mod cache;
pub mod engine;
pub mod imaging;
pub mod latency;
pub mod models;
pub mod mqtt;
pub mod policy;
pub mod profiler;
pub mod serve;
pub mod services;
pub mod telemetry;

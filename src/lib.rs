//! edgerun: an adaptive inference runtime for edge devices.
//!
//! The workspace has three crates, with dependencies in one direction only:
//!
//! - `edgerun-runtime` (`crates/runtime`): engines, models, services, policy, telemetry,
//!   MQTT and `serve`; what a device runs. Re-exported here module by module.
//! - `edgerun-bench` (`crates/bench`): benchmarks, charts and the benchmark data; it drives
//!   the runtime. Re-exported here as [`bench`], [`plot`] and [`data`].
//! - `edgerun` (this package): the command line ([`cli`]) and the `edgerun` binary, with
//!   one entry point per subcommand and the one table of services ([`cli::registry`]).

pub use edgerun_bench as bench;
pub use edgerun_bench::{data, plot};
pub use edgerun_runtime::{
    allocator, cache, engine, imaging, latency, models, mqtt, policy, profiler, serve, services,
    telemetry,
};

pub mod cli;

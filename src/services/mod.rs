//! What a device serves. Each service turns a decoded request into a result with the
//! engines it loaded; none of them knows how requests arrive (CLI, MQTT) or are queued.

pub mod ocr;

//! The topic layout of a device, in one place. Names only: nothing here subscribes or
//! publishes.
//!
//! - `{prefix}/{device}/status`: retained JSON status; the last will sets `offline`.
//! - `{prefix}/{device}/telemetry`: periodic JSON telemetry.
//! - `{prefix}/{device}/{service}/request`: requests to this device.
//! - `$share/{prefix}/{prefix}/fleet/{service}/request`: requests to any device of the
//!   fleet (an MQTT v5 shared subscription: the broker gives each request to one member).

/// The topic level that addresses the whole fleet; no device may be called this.
pub const FLEET: &str = "fleet";

/// Topic names for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    device: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Topics {
        Topics {
            prefix: prefix.trim_matches('/').to_string(),
            device: device.to_string(),
        }
    }

    pub fn status(&self) -> String {
        format!("{}/{}/status", self.prefix, self.device)
    }

    pub fn telemetry(&self) -> String {
        format!("{}/{}/telemetry", self.prefix, self.device)
    }

    /// Where clients send requests for `service` to this device.
    pub fn device_request(&self, service: &str) -> String {
        format!("{}/{}/{service}/request", self.prefix, self.device)
    }

    /// What a device subscribes to for its own requests: every service, so that a request
    /// for one it does not serve is answered `unknown_service` rather than never.
    pub fn device_requests(&self) -> String {
        format!("{}/{}/+/request", self.prefix, self.device)
    }

    /// Where clients send requests for `service` to the whole fleet.
    pub fn fleet_request(&self, service: &str) -> String {
        format!("{}/{FLEET}/{service}/request", self.prefix)
    }

    /// The shared subscription a device takes to receive its share of fleet requests.
    pub fn fleet_subscription(&self, service: &str) -> String {
        format!("$share/{}/{}", self.prefix, self.fleet_request(service))
    }

    /// The service a request topic addresses, if it is one of ours.
    pub fn service_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        // Whole topic levels are compared: a device "f" must not match "fleet".
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            [prefix, target, service, "request"]
                if *prefix == self.prefix
                    && (*target == self.device || *target == FLEET)
                    && !service.is_empty() =>
            {
                Some(service)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let t = Topics::new("edgerun", "pi-7");
        assert_eq!(t.status(), "edgerun/pi-7/status");
        assert_eq!(t.telemetry(), "edgerun/pi-7/telemetry");
        assert_eq!(t.device_request("ocr"), "edgerun/pi-7/ocr/request");
        assert_eq!(t.device_requests(), "edgerun/pi-7/+/request");
        assert_eq!(t.fleet_request("ocr"), "edgerun/fleet/ocr/request");
        assert_eq!(
            t.fleet_subscription("ocr"),
            "$share/edgerun/edgerun/fleet/ocr/request"
        );
    }

    #[test]
    fn request_topics_name_their_service() {
        let t = Topics::new("edgerun", "pi-7");
        assert_eq!(t.service_of("edgerun/pi-7/ocr/request"), Some("ocr"));
        assert_eq!(t.service_of("edgerun/fleet/ocr/request"), Some("ocr"));
        assert_eq!(t.service_of("edgerun/pi-8/ocr/request"), None);
        assert_eq!(t.service_of("edgerun/pi-7/ocr/response"), None);
        assert_eq!(t.service_of("edgerun/pi-7//request"), None);
        assert_eq!(t.service_of("other/pi-7/ocr/request"), None);
        // A device whose id is a prefix of "fleet" still gets fleet requests.
        let f = Topics::new("edgerun", "f");
        assert_eq!(f.service_of("edgerun/fleet/ocr/request"), Some("ocr"));
        assert_eq!(f.service_of("edgerun/f/ocr/request"), Some("ocr"));
        assert_eq!(f.service_of("edgerun/fl/ocr/request"), None);
    }
}

//! Small wrappers over host calls that cannot panic and say what failed.

use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};

use crate::metrics::Counter;

/// The SDK's own logger and panic hook unwrap the host's answer; these ignore it instead, since a
/// log line that cannot be written must not take the VM down.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

pub fn install_logger_and_panic_hook() {
    let _ = log::set_logger(&LOGGER);
    // Envoy filters by its own `wasm` log level as well; let everything through to it.
    log::set_max_level(log::LevelFilter::Debug);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("txgate panicked: {info}"));
    }));
}

/// Counter ids as the host assigned them; a counter that could not be defined is a no-op.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: Vec<Option<u32>>,
}

impl Metrics {
    pub fn define() -> Metrics {
        let ids = Counter::ALL
            .iter()
            .map(|c| match hostcalls::define_metric(MetricType::Counter, c.name()) {
                Ok(id) => Some(id),
                Err(status) => {
                    log::warn!("txgate: metric {} not defined: {status:?}", c.name());
                    None
                }
            })
            .collect();
        Metrics { ids }
    }

    pub fn count(&self, counter: Counter) {
        if let Some(Some(id)) = self.ids.get(counter.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

pub fn now_unix_secs() -> u64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

pub fn buffer(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    match hostcalls::get_buffer(kind, 0, size) {
        Ok(bytes) => Some(bytes.unwrap_or_default()),
        Err(status) => {
            log::warn!("txgate: reading {kind:?} failed: {status:?}");
            None
        }
    }
}

pub fn header_bytes(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

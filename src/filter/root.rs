//! The root context: reads and checks the configuration, defines metrics, makes stream contexts.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::host::{self, Metrics};
use super::payment_check::PaymentCheck;
use crate::config::Config;

#[derive(Default)]
pub struct FilterRoot {
    config: Option<Rc<Config>>,
    metrics: Option<Rc<Metrics>>,
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("txgate {} starting", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let Some(bytes) = host::buffer(BufferType::PluginConfiguration, plugin_configuration_size) else {
            log::error!("txgate: configuration refused: the plugin configuration could not be read");
            return false;
        };
        match Config::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "txgate configured: network {}, {} address(es), price {} sats, {} route(s), explorer cluster {}, failure_mode {:?}",
                    config.network.name(),
                    config.pay_to.len(),
                    config.default_policy.price_sats,
                    config.routes.len(),
                    config.explorers.first().map_or("", |e| e.cluster.as_str()),
                    config.failure_mode,
                );
                self.config = Some(Rc::new(config));
                if self.metrics.is_none() {
                    self.metrics = Some(Rc::new(Metrics::define()));
                }
                true
            }
            Err(err) => {
                log::error!("txgate: configuration refused: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let metrics = self.metrics.clone().unwrap_or_default();
        Some(Box::new(PaymentCheck::new(context_id, self.config.clone(), metrics)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

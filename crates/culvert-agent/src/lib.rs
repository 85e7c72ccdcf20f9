//! Culvert's agent: runs inside the private network, dials out to the server over a pool
//! of WebSockets, registers its services and forwards each tunneled connection to its
//! local target. It reconnects by itself with capped, jittered exponential backoff.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod agent;
mod backoff;
mod failure;
mod http_backend;
mod http_counters;
mod http_proxy;
mod local_flows;
mod metrics;
mod open_error;
pub mod proxy_protocol;
mod service;

pub use agent::{
    Agent, AgentConfig, AgentHandle, ConnectionStatus, LinkState, ServiceCounters, ServiceView,
};
pub use backoff::Backoff;
pub use failure::{Failure, FailureKind};
pub use http_backend::{HttpBackend, SecretSource, DEFAULT_RESPONSE_TIMEOUT};
pub use http_counters::HttpCounters;
pub use local_flows::LocalFlow;
pub use open_error::OpenError;
pub use proxy_protocol::ProxyVersion;
pub use service::{valid_service_name, ServiceSpec};

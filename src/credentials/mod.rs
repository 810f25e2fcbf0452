//! Provider credentials held by the gateway, injected into requests made with gateway keys.
//!
//! - [`aws`]: the gateway's AWS identity (default chain, optional AssumeRole), cached and
//!   refreshed in the background, for SigV4-signing Bedrock requests (`sigv4.rs`).

pub mod aws;

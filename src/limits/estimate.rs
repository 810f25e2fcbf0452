//! What a request will likely use, read from its body before it is forwarded. Pure.
//!
//! - Input tokens: the body's length divided by `limits.bytes_per_input_token` (rounded
//!   up). The body also carries JSON syntax, so for text this is usually above the real
//!   count at 4 bytes per token; at 1 byte per token it is above it for any text.
//! - Output tokens: the request's own cap (`max_tokens`, `max_completion_tokens`,
//!   `max_output_tokens`, Gemini's `generationConfig.maxOutputTokens`, Bedrock Converse's
//!   `inferenceConfig.maxTokens`), else `limits.default_output_tokens`.
//! - The model, when the body names it (OpenAI, Anthropic), to price the estimate.

use serde::Deserialize;
use std::borrow::Cow;

/// What the body says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BodyFacts<'a> {
    /// The top-level `model` string.
    pub model: Option<Cow<'a, str>>,
    /// The request's own output cap.
    pub max_output: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    max_output_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    #[serde(rename = "generationConfig", alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    #[serde(rename = "inferenceConfig")]
    inference_config: Option<InferenceConfig>,
}

/// Read the model and the output cap; nothing when the body is not a JSON object (or names
/// a field twice, as the model scope treats it).
pub fn body_facts(body: &[u8]) -> BodyFacts<'_> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return BodyFacts::default();
    }
    let Ok(top) = serde_json::from_slice::<Top>(body) else {
        return BodyFacts::default();
    };
    let max_output = top
        .max_completion_tokens
        .or(top.max_tokens)
        .or(top.max_output_tokens)
        .or(top.generation_config.and_then(|g| g.max_output_tokens))
        .or(top.inference_config.and_then(|i| i.max_tokens));
    BodyFacts {
        model: top.model,
        // Past the counters' range a cap means "unbounded": the counter's largest value.
        max_output: max_output.map(|n| n.min(super::meter::MAX_VALUE)),
    }
}

/// Input tokens estimated from the body length.
pub fn input_tokens(body_len: usize, bytes_per_token: u64) -> u64 {
    (body_len as u64).div_ceil(bytes_per_token.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_provider_output_cap_is_read() {
        let cap = |b: &str| body_facts(b.as_bytes()).max_output;
        assert_eq!(
            cap(r#"{"model":"gpt-4o","max_tokens":20,"messages":[]}"#),
            Some(20)
        );
        assert_eq!(cap(r#"{"max_tokens":20,"max_completion_tokens":30}"#), Some(30));
        assert_eq!(
            cap(r#"{"model":"gpt-4o","input":"x","max_output_tokens":40}"#),
            Some(40)
        );
        assert_eq!(
            cap(r#"{"contents":[],"generationConfig":{"maxOutputTokens":50,"x":1}}"#),
            Some(50)
        );
        assert_eq!(
            cap(r#"{"messages":[],"inferenceConfig":{"maxTokens":60}}"#),
            Some(60)
        );
        assert_eq!(cap(r#"{"model":"m","messages":[{"max_tokens":9}]}"#), None);
        assert_eq!(cap(r#"{"max_tokens":-1}"#), None);
        assert_eq!(cap("not json"), None);
        assert_eq!(cap(r#"[{"max_tokens":5}]"#), None);
        let f = body_facts(br#"{"model":"claude-sonnet-4-5","max_tokens":1024}"#);
        assert_eq!(f.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(body_facts(br#"{"model":"a","model":"b"}"#), BodyFacts::default());
    }

    #[test]
    fn input_estimate_rounds_up() {
        assert_eq!(input_tokens(0, 4), 0);
        assert_eq!(input_tokens(1, 4), 1);
        assert_eq!(input_tokens(8, 4), 2);
        assert_eq!(input_tokens(9, 4), 3);
        assert_eq!(input_tokens(9, 0), 9);
    }
}

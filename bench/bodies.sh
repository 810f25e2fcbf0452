# bench/bodies.sh: the upstream answers every bench serves, sourced by bench/run.sh and
# bench/callgrind.sh so both measure the same bytes.
#
# write_bodies DIR writes DIR/chat.json (a 760-byte OpenAI chat completion) and
# DIR/stream.sse (a 24-event OpenAI chat stream with include_usage).
write_bodies() {
  mkdir -p "$1"
  # A 760-byte OpenAI chat completion.
  printf '%s' '{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"The image shows a wooden boardwalk path running through a lush green field or meadow, surrounded by tall grass and shrubs. The sky above is blue with some white clouds.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}' \
    >"$1"/chat.json
  # A 24-event OpenAI chat stream with include_usage: role, 20 deltas, finish, usage, [DONE].
  local head='{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":'
  {
    printf 'data: %s[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}\n\n' "$head"
    local w
    for w in The image shows a wooden boardwalk path running through a lush green field or meadow surrounded by tall grass and shrubs; do
      printf 'data: %s[{"index":0,"delta":{"content":" %s"},"logprobs":null,"finish_reason":null}],"usage":null}\n\n' "$head" "$w"
    done
    printf 'data: %s[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}\n\n' "$head"
    printf 'data: %s[],"usage":{"prompt_tokens":19,"completion_tokens":20,"total_tokens":39,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}\n\n' "$head"
    printf 'data: [DONE]\n\n'
  } >"$1"/stream.sse
}

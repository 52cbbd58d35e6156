//! The usage readers of whole (non-streamed) bodies, every protocol: any
//! bytes give usage or nothing, never a panic.
#![no_main]
use bursar::tokens::{usage_from_body, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for p in [
        Protocol::ChatCompletions,
        Protocol::Completions,
        Protocol::Responses,
        Protocol::AnthropicMessages,
        Protocol::Embeddings,
    ] {
        if let Some(u) = usage_from_body(p, data) {
            let _ = (
                u.uncached_prompt_tokens(),
                u.visible_completion_tokens(),
                u.total_tokens(),
            );
        }
    }
});

//! Credentials as they arrive: join tokens (`localml worker --token`) and API keys (an
//! `authorization` header). Properties: no panic; what parses prints back as it came.
#![no_main]

use libfuzzer_sys::fuzz_target;
use localml_scheduler::auth::keys;
use localml_trust::token::JoinToken;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = JoinToken::parse(text) {
        assert_eq!(token.reveal(), text.trim());
        assert_eq!(
            JoinToken::parse(&token.reveal()).map(|t| t.reveal()),
            Ok(token.reveal())
        );
    }
    if let Ok((id, secret)) = keys::parse(text) {
        assert_eq!(format!("{}{id}.{secret}", keys::KEY_PREFIX), text);
    }
});

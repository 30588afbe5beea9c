#![no_main]

use std::borrow::Cow;

use gatehouse::proxy::normalize::{EscapedSlashes, PathOptions, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for escaped_slashes in [
        EscapedSlashes::Reject,
        EscapedSlashes::Decode,
        EscapedSlashes::Keep,
    ] {
        for merge_slashes in [true, false] {
            let opts = PathOptions {
                escaped_slashes,
                merge_slashes,
            };
            let Ok(once) = normalize_path(path, &opts) else {
                continue;
            };
            assert!(once.starts_with('/'), "{path:?} -> {once:?}");
            assert_eq!(
                matches!(once, Cow::Borrowed(_)),
                once == path,
                "{path:?} -> {once:?}"
            );
            // A normalised path must be a fixed point: otherwise a route
            // could be matched on one form and the upstream see another.
            match normalize_path(&once, &opts) {
                Ok(Cow::Borrowed(twice)) => assert_eq!(twice, &*once, "{path:?}"),
                other => panic!("{path:?} -> {once:?} -> {other:?} with {opts:?}"),
            }
        }
    }
});

//! The floor under every authentication: parse a header value, digest it, compare digests.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tower_api_key::{ApiKey, Pepper};

fn key_anatomy(c: &mut Criterion) {
    let pepper = Pepper::from_bytes([7; 32]);
    let key = ApiKey::generate().expect("randomness");
    let header = key.expose_secret().as_bytes().to_vec();
    let stored = pepper.digest(&key);

    let mut group = c.benchmark_group("key");
    group.bench_function("parse", |b| b.iter(|| ApiKey::parse(black_box(&header))));
    group.bench_function("digest", |b| b.iter(|| pepper.digest(black_box(&key))));
    group.bench_function("ct_eq", |b| {
        b.iter(|| black_box(&stored).ct_eq(black_box(&stored)))
    });
    group.bench_function("parse_digest_verify", |b| {
        b.iter(|| {
            let key = ApiKey::parse(black_box(&header)).expect("valid");
            pepper.digest(&key).ct_eq(&stored)
        })
    });
    group.bench_function("reject_wrong_length", |b| {
        b.iter(|| ApiKey::parse(black_box(&header[1..])))
    });
    group.bench_function("generate", |b| b.iter(ApiKey::generate));
    group.finish();
}

criterion_group!(benches, key_anatomy);
criterion_main!(benches);

//! Micro-benchmarks of the per-call pieces of the sidecar's hot path:
//! request validation, SigV4 signing, retry classification and the endpoint
//! cache hit. `scripts/bench` runs them and folds the means into its report.

use std::{
    hint::black_box,
    time::{Duration, SystemTime},
};

use aws_credential_types::Credentials;
use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kvs_sidecar::kvs::presign::{self, Presign};
use kvs_sidecar::kvs::{
    Error, ServiceError,
    arn::{self, ChannelArn},
    endpoint::{Endpoints, Role},
    endpoint_cache::EndpointCache,
    retry, sign,
};

const ARN: &str = "arn:aws:kinesisvideo:us-west-2:123456789012:channel/front-door/1700000000000";

fn longest_arn() -> String {
    let frame = ARN.len() - "front-door".len();
    ARN.replace("front-door", &"n".repeat(arn::MAX_ARN_LEN - frame))
}

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    let longest = longest_arn();
    let client_id = "c".repeat(arn::MAX_CLIENT_ID_LEN);
    group.bench_function("arn", |b| b.iter(|| ChannelArn::parse(black_box(ARN))));
    group.bench_function("arn_1024", |b| {
        b.iter(|| ChannelArn::parse(black_box(&longest)))
    });
    group.bench_function("client_id_256", |b| {
        b.iter(|| arn::validate_client_id(black_box(&client_id)))
    });
    group.finish();
}

fn signing(c: &mut Criterion) {
    let credentials = Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        Some("session-token".into()),
        None,
        "bench",
    );
    let body = Bytes::from(format!(r#"{{"channelArn":"{ARN}"}}"#));
    let request = || {
        http::Request::post(
            "https://w-1234.kinesisvideo.us-west-2.amazonaws.com/joinStorageSession",
        )
        .header("content-type", "application/json")
        .header("user-agent", "kvs-sidecar/0.1.0")
        .body(body.clone())
        .unwrap()
    };
    let now = SystemTime::now();
    c.bench_function("sign/join_request", |b| {
        b.iter_batched(
            request,
            |mut req| sign::sign(&mut req, &credentials, "us-west-2", sign::SERVICE, now),
            BatchSize::SmallInput,
        )
    });
}

/// Reading a KVS error answer: parsing, classifying once into an
/// `ErrorKind` and making the message safe; then the retry decision, which
/// only matches on the kind.
fn classification(c: &mut Criterion) {
    let header = |code: &'static str| {
        http::HeaderMap::from_iter([(
            http::HeaderName::from_static("x-amzn-errortype"),
            http::HeaderValue::from_static(code),
        )])
    };
    let throttled = header("ClientLimitExceededException");
    let not_found = header("ResourceNotFoundException");
    let body = br#"{"message":"The requested channel is not found or not active."}"#;
    let mut group = c.benchmark_group("read_error");
    for (name, headers, status) in [
        ("throttling", &throttled, 400),
        ("not_found", &not_found, 404),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| ServiceError::from_response(status, black_box(headers), black_box(body)))
        });
    }
    group.finish();
    let errors = [
        (
            "throttling",
            Error::Service(ServiceError::from_response(400, &throttled, body)),
        ),
        (
            "not_found",
            Error::Service(ServiceError::from_response(404, &not_found, body)),
        ),
        (
            "transport",
            Error::Transport("connection reset by peer".into()),
        ),
    ];
    let mut group = c.benchmark_group("classify");
    for (name, err) in &errors {
        group.bench_function(*name, |b| b.iter(|| retry::classify(black_box(err))));
    }
    group.finish();
}

fn endpoint_cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = EndpointCache::new(Duration::from_secs(3600), 20_000);
    let endpoint = std::sync::Arc::new(Endpoints {
        webrtc: Some(
            "https://w-1234.kinesisvideo.us-west-2.amazonaws.com"
                .parse()
                .unwrap(),
        ),
        ..Endpoints::default()
    });
    let arns: Vec<ChannelArn> = (0..10_000)
        .map(|i| ChannelArn::parse(&ARN.replace("front-door", &format!("camera-{i}"))).unwrap())
        .collect();
    runtime.block_on(async {
        for arn in &arns {
            let endpoint = endpoint.clone();
            cache
                .get_or_discover(arn, Role::Master, || async move { Ok(endpoint) })
                .await
                .unwrap();
        }
    });
    let hit = &arns[4321];
    c.bench_function("endpoint_cache/hit_of_10k", |b| {
        b.to_async(&runtime).iter(|| async {
            cache
                .get_or_discover(black_box(hit), Role::Master, || async {
                    unreachable!("every channel is cached")
                })
                .await
        })
    });
}

/// The local part of GetSignalingConnection with a warm cache: presigning
/// the signaling URL (SigV4 query signing, with a session token). The rest
/// is the GetIceServerConfig request, a KVS round trip like a join's.
fn presigning(c: &mut Criterion) {
    let arn = ChannelArn::parse(ARN).unwrap();
    let endpoint: http::Uri = "wss://m-1234.kinesisvideo.us-west-2.amazonaws.com"
        .parse()
        .unwrap();
    let credentials = Credentials::new(
        "AKIDEXAMPLE",
        "SECRET",
        Some("TOKEN".repeat(100)),
        None,
        "bench",
    );
    let now = SystemTime::now();
    c.bench_function("signaling/presign_master_url", |b| {
        b.iter(|| {
            Presign {
                endpoint: &endpoint,
                arn: black_box(&arn),
                client_id: None,
                credentials: &credentials,
                time: now,
                expires_in: presign::MAX_EXPIRY,
            }
            .sign()
        })
    });
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = validation, signing, classification, endpoint_cache, presigning
}
criterion_main!(hot_paths);

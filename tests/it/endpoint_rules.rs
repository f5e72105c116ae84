//! AWS's published endpoint test cases for kinesisvideo, run through the
//! sidecar's resolver: every case, errors included (origin of the data in
//! `tests/data/endpoints/README.md`).

use kvs_sidecar::kvs::endpoint::{EndpointSettings, resolve};

#[derive(serde::Deserialize)]
struct Suite {
    #[serde(rename = "testCases")]
    test_cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    documentation: String,
    #[serde(default)]
    params: Params,
    expect: Expect,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Params {
    region: Option<String>,
    #[serde(rename = "UseFIPS", default)]
    use_fips: bool,
    #[serde(default)]
    use_dual_stack: bool,
    endpoint: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    endpoint: Option<Endpoint>,
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct Endpoint {
    url: String,
}

#[test]
fn every_published_kinesisvideo_case_resolves_as_aws_says() {
    let suite: Suite = serde_json::from_str(include_str!(
        "../data/endpoints/kinesisvideo-endpoint-tests-1.json"
    ))
    .expect("the published cases parse");
    assert!(suite.test_cases.len() >= 36, "cases went missing");
    let mut failures = Vec::new();
    for case in &suite.test_cases {
        let p = &case.params;
        // Built field by field: the resolver must apply the override rules
        // itself, since the published cases include contradictory settings.
        let settings = EndpointSettings {
            use_fips: p.use_fips,
            use_dual_stack: p.use_dual_stack,
            override_url: p.endpoint.as_ref().map(|e| e.parse().expect("a URL")),
        };
        let got = resolve(p.region.as_deref(), &settings)
            .map(|uri| uri.to_string().trim_end_matches('/').to_owned())
            .map_err(|e| e.to_string());
        let want = match (&case.expect.endpoint, &case.expect.error) {
            (Some(e), None) => Ok(e.url.clone()),
            (None, Some(error)) => Err(error.clone()),
            _ => panic!("{}: expects neither or both", case.documentation),
        };
        if got != want {
            failures.push(format!(
                "{}: got {got:?}, AWS says {want:?}",
                case.documentation
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

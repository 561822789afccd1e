//! The graph's JSON, DOT and text renderings.
#![allow(clippy::unwrap_used)]

mod common;

use common::{context, options, plan};

const DF: &str = "FROM alpine AS build\nCOPY a /a\nRUN make\nLABEL x=y\nFROM scratch\nCOPY --from=build /a /a\n";

#[test]
fn json_has_stages_steps_and_hex_keys() {
    let g = plan(DF, &context(&[("a", "1")]), &options(&[]));
    let v: serde_json::Value = serde_json::from_str(&g.to_json()).unwrap();
    assert_eq!(v["target"], 1);
    assert_eq!(v["stages"].as_array().unwrap().len(), 2);
    let step = &v["stages"][0]["steps"][2];
    assert_eq!(step["id"], "0.2");
    assert_eq!(step["definition"]["kind"], "run");
    assert_eq!(step["parent"], "0.1");
    assert_eq!(step["key"].as_str().unwrap().len(), 64);
    assert_eq!(step["location"]["line"], 3);
    assert_eq!(v["stages"][1]["steps"][1]["depends_on"][0], 0);
    // The LABEL hangs off the RUN but does not move the chain.
    let label = &v["stages"][0]["steps"][3];
    assert_eq!(label["parent"], "0.2");
    assert_eq!(v["stages"][0]["key"], step["key"]);
}

#[test]
fn dot_has_clusters_chains_and_cross_stage_edges() {
    let g = plan(DF, &context(&[("a", "1")]), &options(&[]));
    let dot = g.to_dot();
    assert!(dot.starts_with("digraph build {"));
    assert!(dot.contains("subgraph \"cluster_0\""));
    assert!(dot.contains("subgraph \"cluster_1\""));
    assert!(dot.contains("\"0.1\" -> \"0.2\" [style=solid];"));
    assert!(dot.contains("\"0.2\" -> \"0.3\" [style=dashed];"));
    assert!(dot.contains("\"0.2\" -> \"1.1\" [style=bold];"));
    assert!(dot.trim_end().ends_with('}'));
}

#[test]
fn text_plan_lists_every_step() {
    let g = plan(DF, &context(&[("a", "1")]), &options(&[]));
    let text = g.to_text();
    assert_eq!(text.lines().count(), 2 + 6);
    assert!(text.starts_with("stage 0 [build] linux/amd64\n"));
    assert!(text.contains("stage 1 [1] linux/amd64 after 0\n"));
}

use memobuild_engine::resolve_step;
use memobuild_frontend::{BuildGraph, StageBase};
use serde::Serialize;

/// A build's steps as a graph, for live views: a node per step (its id is
/// the id build events carry), an edge from each step to the steps that
/// start from it or read from its stage.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BuildDag {
    pub nodes: Vec<DagNode>,
    /// (from, to) step ids.
    pub edges: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DagNode {
    pub id: String,
    /// The stage's name, or its index.
    pub stage: String,
    pub instruction: String,
    /// For a FROM of an image: the id of the events about resolving that
    /// image, which stand for this node (a FROM has none of its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
}

impl BuildDag {
    pub fn of(graph: &BuildGraph) -> Self {
        let mut dag = BuildDag::default();
        for stage in &graph.stages {
            let stage_name = stage.name.clone().unwrap_or_else(|| stage.index.to_string());
            let mut previous: Option<&str> = None;
            for (i, step) in stage.steps.iter().enumerate() {
                let resolved_by = match &stage.base {
                    StageBase::Image { reference } if i == 0 => Some(resolve_step(reference)),
                    _ => None,
                };
                dag.nodes.push(DagNode {
                    id: step.id.clone(),
                    stage: stage_name.clone(),
                    instruction: step.instruction.clone(),
                    resolved_by,
                });
                if let Some(from) = previous {
                    dag.edge(from, &step.id);
                }
                for index in &step.depends_on {
                    let last = graph.stages.iter().find(|s| s.index == *index).and_then(|s| s.steps.last());
                    if let Some(last) = last {
                        dag.edge(&last.id, &step.id);
                    }
                }
                previous = Some(&step.id);
            }
        }
        dag
    }

    fn edge(&mut self, from: &str, to: &str) {
        let edge = (from.to_string(), to.to_string());
        if !self.edges.contains(&edge) {
            self.edges.push(edge);
        }
    }
}

#[cfg(test)]
mod tests {
    use memobuild_frontend::{plan_text, BuildContext, BuildOptions};

    use super::*;

    #[test]
    fn steps_chain_within_stages_and_stages_feed_the_steps_that_read_them() {
        let dockerfile = "FROM scratch AS a\nRUN make x\nFROM scratch AS b\nRUN make y\n\
                          FROM scratch\nCOPY --from=a /x /x\nCOPY --from=b /y /y\n";
        let context = BuildContext::empty();
        let graph = plan_text("Dockerfile", dockerfile, &context, &BuildOptions::default()).unwrap();
        let dag = BuildDag::of(&graph);
        assert_eq!(dag.nodes.len(), 7, "three FROMs and four steps: {dag:?}");
        let edges: Vec<(&str, &str)> = dag.edges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        for edge in [("0.0", "0.1"), ("1.0", "1.1"), ("2.0", "2.1"), ("2.1", "2.2"), ("0.1", "2.1"), ("1.1", "2.2")] {
            assert!(edges.contains(&edge), "{edge:?} in {edges:?}");
        }
        assert_eq!(dag.nodes[1].stage, "a");
        assert!(dag.nodes.iter().all(|n| n.resolved_by.is_none()), "scratch is not resolved: {dag:?}");
    }

    #[test]
    fn a_from_of_an_image_is_resolved_by_the_events_of_its_image() {
        let context = BuildContext::empty();
        let graph = plan_text("Dockerfile", "FROM alpine:3\nRUN true\n", &context, &BuildOptions::default()).unwrap();
        let dag = BuildDag::of(&graph);
        assert_eq!(dag.nodes[0].resolved_by.as_deref(), Some("resolve alpine:3"));
        assert_eq!(dag.nodes[1].resolved_by, None);
    }
}

//! The LocallRelease CRD as written to `crds/locallreleases.yaml` (by `crdgen`).
//!
//! `LocallRelease::crd()` embeds the full upstream `PodTemplateSpec` schema, descriptions
//! included: ~590 KB of YAML, more than the 262144 bytes a client-side `kubectl apply` can keep in
//! its last-applied annotation. Two things keep the file small without losing any validation:
//!
//! - [`crd`] drops the `description` keywords inside the schemas we embed from upstream
//!   (`spec.template`, and the `env` items of every Job template), and keeps every other keyword
//!   there, and every description of our own fields;
//! - [`crd_yaml`] writes the small sub-schemas of `spec.template` in YAML flow style, one line each:
//!   in block style the template's deep nesting alone costs ~160 KB of indentation.

use super::LocallRelease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

/// The CRD, trimmed of upstream descriptions.
pub fn crd() -> CustomResourceDefinition {
    let mut v = serde_json::to_value(LocallRelease::crd()).expect("CRD serializes");
    for version in v.pointer_mut("/spec/versions").and_then(Value::as_array_mut).into_iter().flatten() {
        // The root rule on `metadata.name` names the field (`fieldPath`), which the API server
        // accepts only for a property the schema declares. `name` is one of the two properties
        // of `metadata` a CRD may declare; its rules stay in the root rule, with its message.
        if let Some(root) = version.pointer_mut("/schema/openAPIV3Schema/properties").and_then(Value::as_object_mut) {
            root.insert("metadata".into(), serde_json::json!({"type": "object", "properties": {"name": {"type": "string"}}}));
        }
        let Some(spec) = version.pointer_mut("/schema/openAPIV3Schema/properties/spec") else { continue };
        if let Some(template) = spec.pointer_mut("/properties/template") {
            // Ours (what the field is for) stays; the upstream ones inside it go.
            let own = template.get("description").cloned();
            strip_nested_descriptions(template);
            if let (Some(own), Some(obj)) = (own, template.as_object_mut()) {
                obj.insert("description".into(), own);
            }
        }
        strip_env_descriptions(spec);
    }
    serde_json::from_value(v).expect("trimmed CRD deserializes")
}

/// The CRD as YAML, what `crds/locallreleases.yaml` holds: block style, except that inside
/// `spec.template` every sub-schema whose flow rendering fits in [`FLOW_MAX`] characters is
/// written in flow style on its own line.
pub fn crd_yaml() -> String {
    let mut v = serde_json::to_value(crd()).expect("CRD serializes");
    let mut flows = Vec::new();
    for version in v.pointer_mut("/spec/versions").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(template) = version.pointer_mut("/schema/openAPIV3Schema/properties/spec/properties/template") {
            flow_small_schemas(template, &mut flows);
        }
    }
    let block = serde_yaml::to_string(&v).expect("CRD serializes");
    let mut out = String::with_capacity(block.len());
    for line in block.split_inclusive('\n') {
        let flow = line
            .trim_end()
            .rsplit_once(' ')
            .and_then(|(head, last)| Some((head, last.strip_prefix(PLACEHOLDER)?.parse::<usize>().ok()?)))
            .and_then(|(head, i)| Some((head, flows.get(i)?)));
        match flow {
            Some((head, flow)) => {
                out.push_str(head);
                out.push(' ');
                out.push_str(flow);
                out.push('\n');
            }
            None => out.push_str(line),
        }
    }
    out
}

/// Longest flow-style line (schema text) [`crd_yaml`] writes.
pub const FLOW_MAX: usize = 1000;
/// Stands for the i-th flow-style schema in the block YAML until it is replaced.
const PLACEHOLDER: &str = "locall-crdgen-flow-schema-";

/// Replaces each sub-schema of `s` whose flow rendering is short enough by a placeholder string,
/// pushing the rendering to `flows`; descends into the others.
fn flow_small_schemas(s: &mut Value, flows: &mut Vec<String>) {
    let Some(obj) = s.as_object_mut() else { return };
    let mut visit = |sub: &mut Value| {
        if !sub.is_object() {
            return;
        }
        let mut text = String::new();
        write_flow(sub, &mut text);
        if text.len() <= FLOW_MAX {
            *sub = Value::String(format!("{PLACEHOLDER}{}", flows.len()));
            flows.push(text);
        } else {
            flow_small_schemas(sub, flows);
        }
    };
    for (k, child) in obj.iter_mut() {
        let k = k.as_str();
        if SCHEMA_MAPS.contains(&k) {
            child.as_object_mut().into_iter().flat_map(|m| m.values_mut()).for_each(&mut visit);
        } else if SCHEMAS.contains(&k) {
            match child {
                Value::Array(list) => list.iter_mut().for_each(&mut visit),
                other => visit(other),
            }
        } else if SCHEMA_LISTS.contains(&k) {
            child.as_array_mut().into_iter().flatten().for_each(&mut visit);
        }
    }
}

/// Writes `v` in YAML flow style: `{"key": value, ...}`, `[a, b]`, every string double-quoted
/// with JSON escapes (which YAML double-quoted scalars share).
fn write_flow(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            for (i, (k, c)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_flow(c, out);
            }
            out.push('}');
        }
        Value::Array(l) => {
            out.push('[');
            for (i, c) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_flow(c, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Keywords whose value is a map from names (property names, ...) to schemas.
const SCHEMA_MAPS: &[&str] = &["properties", "patternProperties", "definitions", "dependencies"];
/// Keywords whose value is a schema (or, for `items`, possibly a list of schemas).
const SCHEMAS: &[&str] = &["items", "additionalProperties", "additionalItems", "not"];
/// Keywords whose value is a list of schemas.
const SCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];

/// Removes the `description` of the schema `s` and of every schema nested in it, touching nothing
/// else: a property that happens to be named `description` stays, and so do `default`, `enum`, ...
fn strip_nested_descriptions(s: &mut Value) {
    let Some(obj) = s.as_object_mut() else { return };
    obj.remove("description");
    for (k, child) in obj.iter_mut() {
        let k = k.as_str();
        if SCHEMA_MAPS.contains(&k) {
            for sub in child.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                strip_nested_descriptions(sub);
            }
        } else if SCHEMAS.contains(&k) {
            match child {
                Value::Array(list) => list.iter_mut().for_each(strip_nested_descriptions),
                other => strip_nested_descriptions(other),
            }
        } else if SCHEMA_LISTS.contains(&k) {
            for sub in child.as_array_mut().into_iter().flatten() {
                strip_nested_descriptions(sub);
            }
        }
    }
}

/// Finds every Job template (an object schema with an `env` property of EnvVar items) under `s`
/// and strips the descriptions inside those items, keeping the description of `env` itself.
fn strip_env_descriptions(s: &mut Value) {
    let Some(obj) = s.as_object_mut() else { return };
    let is_job_template = obj.get("properties").and_then(|p| p.get("retries")).is_some();
    for (k, child) in obj.iter_mut() {
        let k = k.as_str();
        if SCHEMA_MAPS.contains(&k) {
            for (name, sub) in child.as_object_mut().into_iter().flat_map(|m| m.iter_mut()) {
                if is_job_template && k == "properties" && name == "env" {
                    if let Some(items) = sub.get_mut("items") {
                        strip_nested_descriptions(items);
                    }
                } else {
                    strip_env_descriptions(sub);
                }
            }
        } else if SCHEMAS.contains(&k) {
            match child {
                Value::Array(list) => list.iter_mut().for_each(strip_env_descriptions),
                other => strip_env_descriptions(other),
            }
        } else if SCHEMA_LISTS.contains(&k) {
            for sub in child.as_array_mut().into_iter().flatten() {
                strip_env_descriptions(sub);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        let crd = serde_json::to_value(crd()).unwrap();
        crd.pointer("/spec/versions/0/schema/openAPIV3Schema").unwrap().clone()
    }

    fn count_key(v: &Value, key: &str) -> usize {
        match v {
            Value::Object(m) => m.iter().map(|(k, c)| usize::from(k == key) + count_key(c, key)).sum(),
            Value::Array(l) => l.iter().map(|c| count_key(c, key)).sum(),
            _ => 0,
        }
    }

    #[test]
    fn fits_a_client_side_apply() {
        let yaml = crd_yaml();
        assert!(yaml.len() < 200 * 1024, "CRD YAML is {} bytes", yaml.len());
        // What `kubectl apply` stores in its last-applied annotation: the object as compact JSON.
        let json = serde_json::to_string(&crd()).unwrap();
        assert!(json.len() < 262_144, "CRD JSON is {} bytes", json.len());
    }

    #[test]
    fn keeps_the_descriptions_of_our_own_fields() {
        let yaml = crd_yaml();
        let s = schema();
        let spec = &s["properties"]["spec"];
        let ours = [
            "/properties/version",
            "/properties/replicas",
            "/properties/template",
            "/properties/stages",
            "/properties/stages/items/properties/steps",
            "/properties/hooks/properties/migration/properties/changesSchema",
            "/properties/hooks/properties/preDeploy/items/properties/env",
            "/properties/preflight/properties/tls/items/properties/minValidity",
            "/properties/traffic/properties/method",
        ];
        for path in ours {
            let d = spec.pointer(&format!("{path}/description")).and_then(Value::as_str);
            assert!(d.is_some_and(|d| !d.is_empty()), "spec{path} lost its description");
        }
        let version = spec["properties"]["version"]["description"].as_str().unwrap();
        assert!(version.contains("The application version this release rolls out"), "{version}");
        assert!(yaml.contains("The application version this release rolls out"));
        assert!(s["properties"]["status"]["properties"]["phase"]["description"].is_string(), "status keeps its descriptions");
    }

    #[test]
    fn drops_upstream_descriptions_only() {
        let s = schema();
        let template = &s["properties"]["spec"]["properties"]["template"];
        assert_eq!(count_key(&template["properties"], "description"), 0, "descriptions left inside spec.template");
        let env = &s["properties"]["spec"]["properties"]["hooks"]["properties"]["preDeploy"]["items"]["properties"]["env"]["items"];
        assert_eq!(count_key(env, "description"), 0, "descriptions left inside env items");
        // The untrimmed CRD had them: the test above would pass vacuously otherwise.
        let full = serde_json::to_value(LocallRelease::crd()).unwrap();
        let full_template = full.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/template").unwrap();
        assert!(count_key(&full_template["properties"], "description") > 100);
    }

    #[test]
    fn keeps_validation() {
        let yaml = crd_yaml();
        assert!(yaml.contains("x-kubernetes-validations"));
        assert!(yaml.contains("two stages must not share a namespace"));
        assert!(yaml.contains("x-kubernetes-list-map-keys"));
        let s = schema();
        let spec = &s["properties"]["spec"];
        // Every CEL rule of ours is still there (stage names, steps, traffic, hooks).
        let full = serde_json::to_value(LocallRelease::crd()).unwrap();
        let rules = |v: &Value| v.to_string().matches("\"rule\":").count();
        assert!(rules(spec) >= 6, "{} CEL rules", rules(spec));
        assert_eq!(rules(&s), rules(&full));
        let template = &spec["properties"]["template"];
        let props = template["properties"].as_object().expect("spec.template keeps its properties");
        assert!(props.contains_key("metadata") && props.contains_key("spec"));
        let pod = &template["properties"]["spec"];
        assert!(pod["properties"]["containers"]["items"]["properties"]["image"].is_object());
        assert_eq!(pod["required"], serde_json::json!(["containers"]));
        // Validation keywords inside the template are untouched: only descriptions went.
        let mut full_template =
            full.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/template").unwrap().clone();
        strip_nested_descriptions(&mut full_template);
        let mut trimmed = template.clone();
        trimmed.as_object_mut().unwrap().remove("description");
        assert_eq!(trimmed, full_template);
        // It still deserializes into the typed CRD and names the kind.
        assert!(yaml.contains("kind: LocallRelease"));
        let back: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back.spec.names.kind, "LocallRelease");
    }

    #[test]
    fn the_yaml_reads_back_as_the_same_crd() {
        let yaml = crd_yaml();
        let back: CustomResourceDefinition = serde_yaml::from_str(&yaml).expect("the YAML parses");
        assert_eq!(back, crd());
        let longest = yaml.lines().map(str::len).max().unwrap();
        assert!(longest < FLOW_MAX + 200, "a line of {longest} characters");
        assert!(!yaml.contains(PLACEHOLDER));
        // Our own fields stay in block style.
        assert!(yaml.contains("\n              version:\n"), "spec.version is written in block style");
    }

    #[test]
    fn flow_style_quotes_what_yaml_would_misread() {
        let v = serde_json::json!({"a: b": ["x, y", "{z}", "line\nbreak", "\"q\"", true, null, 1.5, "yes", "#c"]});
        let mut text = String::new();
        write_flow(&v, &mut text);
        assert_eq!(serde_yaml::from_str::<Value>(&format!("k: {text}\n")).unwrap(), serde_json::json!({"k": v}));
    }

    #[test]
    fn a_property_named_description_is_not_a_keyword() {
        let mut s = serde_json::json!({
            "description": "gone",
            "type": "object",
            "properties": {"description": {"type": "string", "description": "gone too"}},
            "default": {"description": "data, kept"},
        });
        strip_nested_descriptions(&mut s);
        assert_eq!(
            s,
            serde_json::json!({
                "type": "object",
                "properties": {"description": {"type": "string"}},
                "default": {"description": "data, kept"},
            })
        );
    }
}

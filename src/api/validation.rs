//! Kubernetes' own rules for the names, label keys and values and URLs a release carries into
//! the objects the operator creates, enforced by the schema at admission so a mistake is refused
//! naming the field instead of failing later when a child object is written.
//!
//! OpenAPI `pattern` and `maxLength` where the value is a field (they cost nothing in the API
//! server's CEL budget); CEL where only CEL can reach: the release's `metadata.name` (a rule at the
//! root), map keys (labels and annotations, checked with the API server's own
//! `format.qualifiedName()`), URLs (`isURL`, `url()`).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::core::{Message, Rule};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

/// A DNS-1123 label (a namespace, a container name): at most 63 characters (schema `maxLength`).
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A DNS-1123 subdomain (most object names): dot-separated labels, at most 253 characters.
pub const DNS_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]` beginning and ending
/// alphanumeric.
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// A release's name: a DNS-1035 label (starts with a letter), because it names the release's
/// Services (`<name>`, `<name>-<revision>`) and Service names must be DNS-1035 labels.
pub const RELEASE_NAME_PATTERN: &str = r"^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// The longest release name: 63 minus `-` and the 8-character revision, so the Deployment and
/// the per-revision Service, `<name>-<revision>`, are the release's name unabridged; and the name
/// is a valid value of the `app.kubernetes.io/name` label. Longer Job names (`<name>-<revision>-
/// <sequence>-<slot>`) and `locall.io/release` values (`<namespace>.<name>`) are cut and hashed by
/// `engine::names`, which keeps them at most 63 characters and unique.
pub const RELEASE_NAME_MAX: usize = 54;

/// Entries a label or annotation map of the spec may hold: bounds the cost of the CEL rule on its
/// keys within the API server's budget.
pub const MAX_METADATA_ENTRIES: u32 = 64;

/// The root rule on `metadata.name` (CEL reads the name at the root, not the namespace).
pub fn release_name_rule() -> Rule {
    // Checked when the release is created (a name never changes): a release created before
    // this rule, with a longer name, keeps being written (status included) after an upgrade.
    Rule::new(format!(
        "oldSelf.hasValue() || (self.metadata.name.size() <= {RELEASE_NAME_MAX} && self.metadata.name.matches('{RELEASE_NAME_PATTERN}'))"
    ))
    .optional_old_self(true)
    .message(
        format!(
            "metadata.name must be at most {RELEASE_NAME_MAX} characters of lowercase letters, digits and '-', starting with a letter and ending with a letter or digit: it names the release's Services and Deployments (<name>-<revision>)"
        )
        .as_str(),
    )
    .field_path(".metadata.name")
}

/// The rule on a label or annotation map: every key is a qualified name (`name` or
/// `prefix/name`: the prefix a DNS subdomain, the name at most 63 characters of `[A-Za-z0-9-_.]`
/// beginning and ending alphanumeric), as the API server checks on the objects it lands on. The
/// message quotes the first key that is not.
pub fn qualified_keys_rule() -> Rule {
    const BAD: &str = "format.qualifiedName().validate(k).hasValue()";
    Rule::new(format!("self.all(k, !{BAD})")).message(Message::Expression(format!(
        "'key \"' + self.filter(k, {BAD})[0] + '\" is not a qualified name ([prefix/]name: name up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends; prefix a DNS subdomain)'"
    )))
}

/// The rule on a URL the operator calls: it parses, its scheme is http or https and it names a
/// host (Go's URL parser, behind `isURL`, admits `http://` with no host; the operator's does not).
pub fn http_url_rule() -> Rule {
    Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''")
        .message("must be an http or https URL with a host, e.g. http://prometheus.monitoring:9090")
}

/// Schema of a map of annotations: string values, keys checked by [`qualified_keys_rule`].
pub fn annotations_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string"},
        "maxProperties": MAX_METADATA_ENTRIES,
        "x-kubernetes-validations": [qualified_keys_rule()],
    })
}

/// Schema of a map of labels: keys checked by [`qualified_keys_rule`], values label values.
pub fn labels_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN},
        "maxProperties": MAX_METADATA_ENTRIES,
        "x-kubernetes-validations": [qualified_keys_rule()],
    })
}

/// The upstream `PodTemplateSpec` schema, with what a Deployment's pods need that the upstream
/// schema leaves to the Pod's own validation: every container (and init container) names an
/// `image`, and its name is a DNS-1123 label; label and annotation keys are qualified names and
/// label values label values.
pub fn pod_template_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = PodTemplateSpec::json_schema(generator);
    for list in ["containers", "initContainers"] {
        let pointer = format!("/properties/spec/properties/{list}/items");
        let container = schema.pointer_mut(&pointer).and_then(Value::as_object_mut);
        let container = container.unwrap_or_else(|| panic!("PodTemplateSpec schema has no {pointer}"));
        let props = container.get_mut("properties").and_then(Value::as_object_mut).expect("container properties");
        let name = props.get_mut("name").and_then(Value::as_object_mut).expect("container name");
        name.insert("maxLength".into(), json!(63));
        name.insert("pattern".into(), json!(DNS_LABEL_PATTERN));
        let image = props.get_mut("image").and_then(Value::as_object_mut).expect("container image");
        image.insert("minLength".into(), json!(1));
        let required = container.entry("required").or_insert_with(|| json!([])).as_array_mut().expect("required is a list");
        if !required.contains(&json!("image")) {
            required.push(json!("image"));
        }
    }
    // The pod template's own labels and annotations land on the Deployment's pods. Their maps
    // keep the upstream's unbounded size, so their key rule has a fixed message (quoting the bad
    // key costs more than the budget allows on an unbounded map).
    let meta = schema.pointer_mut("/properties/metadata/properties").and_then(Value::as_object_mut).expect("template metadata");
    let keys = Rule::new(qualified_keys_rule().rule).message(
        "keys must be qualified names ([prefix/]name: name up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends; prefix a DNS subdomain)",
    );
    for map in ["labels", "annotations"] {
        let m = meta.get_mut(map).and_then(Value::as_object_mut).unwrap_or_else(|| panic!("template metadata.{map}"));
        m.insert("x-kubernetes-validations".into(), json!([keys]));
    }
    let values = meta.get_mut("labels").and_then(|l| l.pointer_mut("/additionalProperties")).and_then(Value::as_object_mut);
    let values = values.expect("label values");
    values.insert("maxLength".into(), json!(63));
    values.insert("pattern".into(), json!(LABEL_VALUE_PATTERN));
    schema
}

/// The schema of `spec.components[].template`: an object with at least one container, each
/// with a DNS-label name and an image; the rest of the pod template is kept as written and
/// checked by the API server when the component's Deployment is applied (a refusal names
/// `spec.components[i].template`). The full upstream schema once per component would take the
/// CRD past what a client-side `kubectl apply` can keep.
pub fn component_template_schema(_: &mut SchemaGenerator) -> Schema {
    let container = json!({
        "type": "object",
        "required": ["name", "image"],
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "name": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL_PATTERN},
            "image": {"type": "string", "minLength": 1},
        },
    });
    let v = json!({
        "type": "object",
        "required": ["spec"],
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "spec": {
                "type": "object",
                "required": ["containers"],
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "containers": {"type": "array", "minItems": 1, "maxItems": 20, "items": container},
                    "initContainers": {"type": "array", "maxItems": 20, "items": container},
                },
            },
        },
    });
    Schema::try_from(v).expect("an object schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::names;
    use regex::Regex;

    /// The names `engine::names` derives from every release name the schema admits are valid
    /// Kubernetes names where they land; at the maximum length, the Deployment and revision
    /// Service are the release's name unabridged.
    #[test]
    fn what_the_schema_admits_names_valid_children() {
        let release = Regex::new(RELEASE_NAME_PATTERN).unwrap();
        let dns_label = Regex::new(DNS_LABEL_PATTERN).unwrap();
        let dns1035 = Regex::new(r"^[a-z]([-a-z0-9]*[a-z0-9])?$").unwrap();
        let label_value = Regex::new(LABEL_VALUE_PATTERN).unwrap();
        let admitted = |n: &str| n.len() <= RELEASE_NAME_MAX && release.is_match(n);
        let max = "x".repeat(RELEASE_NAME_MAX);
        let mut max_hyphens = "a-".repeat(RELEASE_NAME_MAX.div_ceil(2));
        max_hyphens.truncate(RELEASE_NAME_MAX - 1);
        max_hyphens.push('z');
        assert_eq!(max_hyphens.len(), RELEASE_NAME_MAX);
        for n in ["a", "api", "locall-api", "a1", "a-1-b", max.as_str(), max_hyphens.as_str()] {
            assert!(admitted(n), "{n:?} should be admitted");
            let rev = "0a1b2c3d";
            for child in [names::deployment(n, rev), names::revision_service(n, rev), names::entry_service(n)] {
                assert!(child.len() <= 63 && dns1035.is_match(&child), "{n:?}: {child:?} is not a Service/Deployment name");
            }
            assert_eq!(names::deployment(n, rev), format!("{n}-{rev}"), "unabridged at {} characters", n.len());
            let job = names::job(n, &names::attempt(rev, 12345), &names::Slot::Verify { stage: "production", name: "e2e-full" }.suffix());
            assert!(job.len() <= 63 && dns_label.is_match(&job), "{job:?}");
            assert!(label_value.is_match(n) && n.len() <= 63, "app.kubernetes.io/name={n}");
            let ns = "n".repeat(63);
            let l = names::release_label(&ns, n);
            assert!(l.len() <= 63 && label_value.is_match(&l), "locall.io/release={l}");
        }
        for n in ["", "1api", "-api", "api-", "Api", "a.b", "a_b", "x".repeat(RELEASE_NAME_MAX + 1).as_str()] {
            assert!(!admitted(n), "{n:?} should be refused");
        }
    }

    /// The patterns say what Kubernetes says (apimachinery's `IsDNS1123Label`,
    /// `IsDNS1123Subdomain`, `IsValidLabelValue`), on the cases it documents and their near misses.
    #[test]
    fn the_patterns_are_kubernetes_own() {
        let check = |pattern: &str, max: usize, good: &[&str], bad: &[&str]| {
            let re = Regex::new(pattern).unwrap();
            for g in good {
                assert!(re.is_match(g) && g.len() <= max, "{pattern}: {g:?} should match");
            }
            for b in bad {
                assert!(!re.is_match(b) || b.len() > max, "{pattern}: {b:?} should not match");
            }
        };
        let l63 = "a".repeat(63);
        let l64 = "a".repeat(64);
        check(DNS_LABEL_PATTERN, 63, &["a", "0", "a-b", "1-2", "a--b", &l63], &["", "A", "-a", "a-", "a.b", "a_b", " a", &l64]);
        check(
            DNS_SUBDOMAIN_PATTERN,
            253,
            &["a", "a.b", "a-b.c-d", "0.1", "a--b.c", &format!("{l63}.{l63}")],
            &["", "A", ".a", "a.", "a..b", "a.-b", "a-.b", "a_b", "a/b"],
        );
        check(LABEL_VALUE_PATTERN, 63, &["", "a", "A", "1.0.0", "a_b", "a-b.c_D", &l63], &["-a", "a-", "_a", "a b", "a/b", &l64]);
    }

    #[test]
    fn the_template_requires_images_and_dns_label_container_names() {
        // Nested schemas inlined, as the CRD's generator writes them.
        let mut generator = schemars::generate::SchemaSettings::openapi3().with(|s| s.inline_subschemas = true).into_generator();
        let schema = pod_template_schema(&mut generator);
        for list in ["containers", "initContainers"] {
            let items = schema.pointer(&format!("/properties/spec/properties/{list}/items")).unwrap();
            assert_eq!(items["properties"]["name"]["pattern"], DNS_LABEL_PATTERN);
            assert_eq!(items["properties"]["name"]["maxLength"], 63);
            assert_eq!(items["properties"]["image"]["minLength"], 1);
            let required = items["required"].as_array().unwrap();
            assert!(required.contains(&json!("name")) && required.contains(&json!("image")), "{list}: {required:?}");
        }
        let meta = schema.pointer("/properties/metadata/properties").unwrap();
        assert_eq!(meta["labels"]["additionalProperties"]["pattern"], LABEL_VALUE_PATTERN);
        for map in ["labels", "annotations"] {
            assert_eq!(meta[map]["x-kubernetes-validations"][0]["rule"], qualified_keys_rule().rule, "{map}");
        }
    }
}

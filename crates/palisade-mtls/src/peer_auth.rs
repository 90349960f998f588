//! Istio's `PeerAuthentication` for one workload and port: the most specific
//! document wins (a workload selector, then the workload's namespace, then
//! the root namespace), `UNSET` inherits from the next, and
//! `portLevelMtls` (only with a selector, as in Istio) overrides for its port.
//! As Istio composes them (`ComposePeerAuthentication`), a selector
//! without labels (`selector: {}`) is no selector, and a selector in the
//! root namespace is ignored (with a warning).

use palisade_core::policy::{Document, PeerAuthenticationSpec, PolicyError, WorkloadPolicy};

use crate::server::MtlsMode;

/// The mode for `port` of the workload (default [`MtlsMode::Strict`], as
/// `--client-ca` asks for mutual TLS).
///
/// Modes and `portLevelMtls` without a selector are checked when the policy
/// file loads.
///
/// # Errors
/// A [`PolicyError`] naming the document of two documents of the same level.
pub fn mode_for_port(w: &WorkloadPolicy<'_>, port: u16) -> Result<MtlsMode, PolicyError> {
    let root = &w.workload().root_namespace;
    for warning in w.warnings() {
        palisade_core::config_warning!(target: crate::LOG_TARGET, "{warning}");
    }
    let mut levels: [Option<(&Document, &PeerAuthenticationSpec)>; 3] = [None, None, None];
    for (doc, spec) in w.peer_authentications() {
        let in_root = doc.metadata.namespace() == root;
        let level = if !spec.selects_workloads() {
            if in_root { 2 } else { 1 }
        } else if in_root {
            // Ignored, as `warnings` said.
            continue;
        } else {
            0
        };
        if let Some((prev, _)) = levels[level] {
            return Err(w.error_at(
                doc,
                "metadata.name",
                format!(
                    "document {} already sets PeerAuthentication at this level for this workload",
                    prev.index
                ),
            ));
        }
        levels[level] = Some((doc, spec));
    }
    for (_, spec) in levels.into_iter().flatten() {
        let port_mode = spec.port_level_mtls.get(&port).and_then(|m| m.mode);
        if let Some(mode) = port_mode.or_else(|| spec.mtls.as_ref().and_then(|m| m.mode)) {
            return Ok(mode);
        }
    }
    Ok(MtlsMode::Strict)
}

#[cfg(test)]
mod tests {
    use palisade_core::policy::{PolicySet, Workload};

    use super::*;

    fn mode(yaml: &str, port: u16) -> Result<MtlsMode, PolicyError> {
        let set = PolicySet::from_yaml_str(yaml, "pa.yaml")?;
        mode_for_port(&set.for_workload(&Workload::new("details", "default")), port)
    }

    const MESH: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: mesh, namespace: istio-system}\nspec: {mtls: {mode: PERMISSIVE}}\n";

    #[test]
    fn the_most_specific_document_wins_and_unset_inherits() {
        assert_eq!(mode("", 443).unwrap(), MtlsMode::Strict);
        assert_eq!(mode(MESH, 443).unwrap(), MtlsMode::Permissive);
        let ns = format!(
            "{MESH}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: ns}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
        );
        assert_eq!(mode(&ns, 443).unwrap(), MtlsMode::Strict);
        let unset = format!(
            "{MESH}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: ns}}\nspec: {{mtls: {{mode: UNSET}}}}\n"
        );
        assert_eq!(mode(&unset, 443).unwrap(), MtlsMode::Permissive);
    }

    /// As Istio's `ComposePeerAuthentication`: `selector: {}` is the
    /// namespace's (or the mesh's) policy, and a selector in the root
    /// namespace counts for nothing, so neither overrides the namespace.
    #[test]
    fn empty_selectors_are_namespace_wide_and_root_selectors_are_ignored() {
        let ns = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ns}\nspec: {mtls: {mode: STRICT}}\n";
        let doc = |name: &str, namespace: &str, selector: &str| {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{selector: {selector}, mtls: {{mode: DISABLE}}}}\n"
            )
        };
        let root_selector = format!(
            "{ns}{}",
            doc("w", "istio-system", "{matchLabels: {app: details}}")
        );
        assert_eq!(mode(&root_selector, 443).unwrap(), MtlsMode::Strict);
        let root_empty = format!("{ns}{}", doc("mesh", "istio-system", "{}"));
        assert_eq!(
            mode(&root_empty, 443).unwrap(),
            MtlsMode::Strict,
            "the mesh's, under the namespace's"
        );
        assert_eq!(
            mode(&doc("mesh", "istio-system", "{}")[4..], 443).unwrap(),
            MtlsMode::Disable,
            "alone, the mesh's applies"
        );
        // `selector: {}` in the namespace is the namespace's policy: a
        // second one at that level.
        let two = format!("{ns}{}", doc("empty", "default", "{}"));
        assert!(mode(&two, 443).unwrap_err().to_string().contains("already sets"));
        // And a selector with labels wins over the namespace.
        let mine = format!("{ns}{}", doc("w", "default", "{matchLabels: {app: details}}"));
        assert_eq!(mode(&mine, 443).unwrap(), MtlsMode::Disable);
    }

    #[test]
    fn port_level_modes_override_for_their_port() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: w}\nspec:\n  selector: {matchLabels: {app: details}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    9090: {mode: DISABLE}\n";
        assert_eq!(mode(yaml, 9090).unwrap(), MtlsMode::Disable);
        assert_eq!(mode(yaml, 9080).unwrap(), MtlsMode::Strict);
    }

    #[test]
    fn bad_modes_and_port_levels_without_selector_are_errors() {
        let bad = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: w}\nspec: {mtls: {mode: STRICTER}}\n";
        let err = mode(bad, 1).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("spec.mtls.mode"));
        assert!(err.to_string().contains("(at line 4, column 21)"), "{err}");
        let no_sel = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: w}\nspec: {portLevelMtls: {80: {mode: DISABLE}}}\n";
        assert_eq!(
            mode(no_sel, 80).unwrap_err().field.as_deref(),
            Some("spec.portLevelMtls")
        );
        let empty_sel = no_sel.replace("spec: {", "spec: {selector: {}, ");
        assert_eq!(
            mode(&empty_sel, 80).unwrap_err().field.as_deref(),
            Some("spec.portLevelMtls")
        );
    }
}

//! The policy that `explain` and `test` decide with: the policy file, and
//! the documents `--with FILE` and a case file's `with:` add to it (the
//! issuer setup a fragment leaves out, as a `RequestAuthentication`), read
//! as one stream, the file's documents first.
//!
//! Each file is read and validated on its own, so a problem names the file
//! it is in; a problem found when the documents are compiled together
//! names the file and document it comes from too ([`Policy::locate`]).

use std::path::{Path, PathBuf};

use palisade_core::policy::{PolicyError, PolicySet};
use serde_json::Value;

/// The policy file's documents and those added to them.
pub(crate) struct Policy {
    pub(crate) set: PolicySet,
    /// The last index of the policy file's own documents in its stream
    /// (empty documents counted, as errors count them); added documents
    /// follow it.
    own: usize,
    /// Where each added document comes from: its source and its index there.
    added: Vec<(String, u32)>,
    /// What each file said as it loaded ([`PolicySet::warnings`]), naming
    /// its own file and document.
    pub(crate) warnings: Vec<String>,
}

impl Policy {
    /// Reads `file`, then every file of `with`.
    ///
    /// # Errors
    /// The first file that does not load, as a [`PolicyError`] naming it.
    pub(crate) fn load(file: &Path, with: &[PathBuf]) -> Result<Self, PolicyError> {
        let set = PolicySet::from_file(file)?;
        let mut policy = Self {
            own: set.documents().iter().map(|d| d.index).max().unwrap_or(0),
            warnings: set.warnings().iter().map(ToString::to_string).collect(),
            set,
            added: Vec::new(),
        };
        for extra in with {
            policy.add(&PolicySet::from_file(extra)?, true)?;
        }
        Ok(policy)
    }

    /// Adds the documents of a case file's `with:`, each a YAML mapping
    /// (`apiVersion`, `kind`, …); `source` names them in errors.
    ///
    /// # Errors
    /// A [`PolicyError`] naming `source`, the document and the field.
    pub(crate) fn add_values(&mut self, values: &[Value], source: &str) -> Result<(), PolicyError> {
        if values.is_empty() {
            return Ok(());
        }
        // JSON is YAML: the documents are read by the policy file's loader.
        let stream: Vec<String> = values.iter().map(Value::to_string).collect();
        let set = PolicySet::from_yaml_str(&stream.join("\n---\n"), source).map_err(|mut e| {
            // Lines of that text, not of the case file.
            (e.line, e.column) = (None, None);
            e
        })?;
        self.add(&set, false)
    }

    /// Adds `other`'s documents after those there are; `lines` keeps their
    /// line numbers (a file's, not a case file's `with:`).
    ///
    /// # Errors
    /// An added document of the kind, namespace and name of one there is,
    /// as the loader refuses two in one file: both would apply here, where
    /// Kubernetes keeps one.
    fn add(&mut self, other: &PolicySet, lines: bool) -> Result<(), PolicyError> {
        let mut documents = self.set.documents().to_vec();
        for doc in other.documents() {
            if !doc.metadata.name.is_empty()
                && let Some(first) = documents.iter().find(|d| d.resource() == doc.resource())
            {
                let (file, at) = self.origin(first.index);
                return Err(other.error_at(
                    doc,
                    "metadata.name",
                    format!(
                        "{} is already document {at} of {file}: give each its own name (Kubernetes would keep only one)",
                        doc.resource()
                    ),
                ));
            }
            let mut doc = doc.clone();
            self.added.push((
                other.source().to_owned(),
                u32::try_from(doc.index).unwrap_or(u32::MAX),
            ));
            doc.index = self.own + self.added.len();
            if !lines {
                doc.line = None;
            }
            documents.push(doc);
        }
        self.set = PolicySet::from_documents(self.set.source(), documents).map_err(|e| self.locate(e))?;
        self.warnings
            .extend(other.warnings().iter().map(ToString::to_string));
        Ok(())
    }

    /// The file and index of the document at `index` of the stream.
    fn origin(&self, index: usize) -> (String, usize) {
        match index.checked_sub(self.own + 1).and_then(|i| self.added.get(i)) {
            Some((source, at)) => (source.clone(), *at as usize),
            None => (self.set.source().to_owned(), index),
        }
    }

    /// `e`, found compiling the documents together, with the file and
    /// index of an added document it names.
    pub(crate) fn locate(&self, mut e: PolicyError) -> PolicyError {
        let Some(index) = e.document.and_then(|d| usize::try_from(d).ok()) else {
            return e;
        };
        if index > self.own {
            let (file, at) = self.origin(index);
            e.file = file;
            e.document = u32::try_from(at).ok();
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const REALM: &str = "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: realm}
spec:
  jwtRules: [{issuer: https://kc.example/realms/shop, audiences: [shop]}]
";

    #[test]
    fn added_documents_keep_their_file_and_index_in_errors() {
        let dir = std::env::temp_dir().join(format!("palisade-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let main = dir.join("main.yaml");
        let realm = dir.join("realm.yaml");
        // An empty document (commented out) between two of the file's own:
        // the second is document 3, as errors count.
        std::fs::write(
            &main,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {}\n---\n# off\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: z}\nspec: {}\n",
        )
        .unwrap();
        std::fs::write(&realm, REALM).unwrap();
        let mut policy = Policy::load(&main, std::slice::from_ref(&realm)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(policy.set.documents().len(), 3);
        let own = &policy.set.documents()[1];
        let e = policy.locate(policy.set.error_at(own, "spec", "wrong"));
        assert_eq!(
            (e.file.as_str(), e.document),
            (main.display().to_string().as_str(), Some(3))
        );
        let added = &policy.set.documents()[2];
        let e = policy.locate(policy.set.error_at(added, "spec.jwtRules[0]", "wrong"));
        assert_eq!(e.file, realm.display().to_string());
        assert_eq!(e.document, Some(1));
        assert_eq!(e.line.map(|l| l.get()), Some(1), "{e}");

        policy
            .add_values(&[json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "b"}})], "c.yaml `with`")
            .unwrap();
        let third = &policy.set.documents()[3];
        let e = policy.locate(policy.set.error_at(third, "spec", "wrong"));
        assert_eq!(
            e.to_string(),
            "c.yaml `with`: document 1 (AuthorizationPolicy default/b): field `spec`: wrong"
        );
        // The policy file's own documents are left as they are.
        let first = &policy.set.documents()[0];
        let e = policy.locate(policy.set.error_at(first, "spec", "wrong"));
        assert_eq!(e.file, main.display().to_string());

        // A document named as one there is, from the file or added: refused,
        // as in one file.
        for (name, file) in [
            ("a", main.display().to_string()),
            ("b", "c.yaml `with`".to_owned()),
        ] {
            let twice = policy
                .add_values(&[json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": name}})], "d.yaml `with`")
                .unwrap_err()
                .to_string();
            assert!(
                twice.contains(&format!(
                    "AuthorizationPolicy default/{name} is already document "
                )) && twice.contains(&file),
                "{twice}"
            );
        }
        let bad = policy
            .add_values(&[json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication", "metadata": {"name": "x"}, "spec": {"jwtRulez": []}})], "c.yaml `with`")
            .unwrap_err();
        assert!(
            bad.to_string().starts_with(
                "c.yaml `with`: document 1 (RequestAuthentication default/x): field `spec.jwtRulez`"
            ),
            "{bad}"
        );
        assert_eq!(bad.line, None);

        // What an added file says as it loads is kept, naming that file.
        assert!(policy.warnings.is_empty(), "{:?}", policy.warnings);
        policy
            .add_values(
                &[json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {}})],
                "e.yaml `with`",
            )
            .unwrap();
        assert!(
            matches!(&policy.warnings[..], [w] if w.starts_with("e.yaml `with`: document 1") && w.contains("metadata.name")),
            "{:?}",
            policy.warnings
        );
    }
}

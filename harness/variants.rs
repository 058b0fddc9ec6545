//! The registry of datapath variants as the lab loader sees it: overlays
//! ([`crate::overlay::OVERLAYS`]) and filters ([`crate::filter::FILTERS`])
//! behind [`lab::Variants`], and the loading functions that use it.
//!
//! `lab` defines the trait and imports no variant; the variants import `lab`;
//! this module, above both, joins them.

use std::path::Path;

use crate::filter::{self, FILTERS};
use crate::lab::{self, Kind, Lab, LabError, LabKeys, VariantAxis};
use crate::overlay::{self, Containers, Variant, OVERLAYS};

/// Every registered overlay and filter.
pub struct Registry;

/// The variants of a kind, as their common base.
fn of(kind: Kind) -> Vec<&'static dyn Variant> {
    match kind {
        Kind::Overlay => OVERLAYS.iter().map(|o| *o as &dyn Variant).collect(),
        Kind::Filter => FILTERS.iter().map(|f| *f as &dyn Variant).collect(),
    }
}

fn variant(kind: Kind, name: &str) -> Option<&'static dyn Variant> {
    of(kind).into_iter().find(|v| v.name() == name)
}

/// A finding about a value of a matrix axis names the value it was found with.
fn with_axis_value(err: LabError, kind: Kind, name: &str, j: usize) -> LabError {
    match err {
        LabError::Invalid { location, field, message } => LabError::Invalid {
            location,
            field,
            message: format!("with {} {name} (matrix.{}[{j}]): {message}", kind.key(), kind.key()),
        },
        other => other,
    }
}

impl lab::Variants for Registry {
    fn names(&self, kind: Kind) -> Vec<&'static str> {
        of(kind).iter().map(|v| v.name()).collect()
    }

    fn keys(&self, kind: Kind, name: &str) -> Option<LabKeys> {
        variant(kind, name).map(|v| v.lab_keys())
    }

    fn comparable(&self, kind: Kind, name: &str) -> Result<(), &'static str> {
        match kind {
            Kind::Overlay => overlay::find(name).map_or(Ok(()), |o| o.comparable()),
            Kind::Filter => Ok(()),
        }
    }

    fn routes_containers(&self, name: &str) -> bool {
        overlay::find(name).is_some_and(|o| o.containers() == Containers::Routed)
    }

    /// Each selected overlay and filter is validated with the lab switched to it.
    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        for (kind, names, axis) in [
            (Kind::Overlay, lab.overlays(), lab.matrix.overlay.is_some()),
            (Kind::Filter, lab.filters(), lab.matrix.filter.is_some()),
        ] {
            for (j, name) in names.iter().enumerate() {
                let switched = match kind {
                    Kind::Overlay => lab.with_overlay(name),
                    Kind::Filter => lab.with_filter(name),
                };
                let v = variant(kind, name).expect("names were checked");
                v.validate(&switched).map_err(|e| if axis { with_axis_value(e, kind, name, j) } else { e })?;
            }
        }
        Ok(())
    }

    /// A filter that enforces needs the containers' traffic to cross the
    /// place the overlay offers it, and to be able to act there.
    fn validate_pairs(&self, lab: &Lab) -> Result<(), LabError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for case in lab.cases() {
            let pair = (case.params.overlay(lab).to_string(), case.params.filter(lab).to_string());
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        for (o, f) in pairs {
            let (o, f) = (overlay::get(&o), filter::get(&f));
            if !f.enforces() {
                continue;
            }
            let switched = lab.with_overlay(o.name());
            o.hosts_filters(&switched).map_err(|e| match e {
                LabError::Invalid { location, field, message } => LabError::Invalid {
                    location,
                    field,
                    message: format!("overlay {} cannot host filter {}: {message}", o.name(), f.name()),
                },
                other => other,
            })?;
            let points = o.enforcement_points(&switched);
            if !points.iter().any(|p| f.acts_at(p)) {
                let j = lab.filters().iter().position(|n| *n == f.name()).unwrap_or(0);
                let field = match lab.matrix.filter.is_some() {
                    true => vec![lab::Seg::Key("matrix"), lab::Seg::Key("filter"), lab::Seg::Index(j)],
                    false => vec![lab::Seg::Key("filter")],
                };
                let message = format!(
                    "filter {} cannot act where overlay {} handles the containers' traffic ({}): \
                     choose another filter, or leave the pair out with `matrix.exclude`",
                    f.name(),
                    o.name(),
                    points.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                return Err(lab.invalid(lab::Issue::new(field, message)));
            }
        }
        Ok(())
    }

    fn axes(&self, lab: &Lab) -> Result<Vec<VariantAxis>, LabError> {
        let mut out = Vec::new();
        for (kind, names) in [(Kind::Overlay, lab.overlays()), (Kind::Filter, lab.filters())] {
            for name in names {
                let v = variant(kind, name).expect("names were checked");
                for (key, values) in v.axes(lab)? {
                    out.push(VariantAxis { owner: name.to_string(), key, values });
                }
            }
        }
        Ok(out)
    }
}

/// Reads, parses and validates a lab file with every registered variant.
pub fn load_lab(path: &Path) -> Result<Lab, LabError> {
    Lab::load(path, &Registry)
}

/// Parses and validates lab text; `path` is used in error messages only.
pub fn parse_lab(text: &str, path: &Path) -> Result<Lab, LabError> {
    Lab::parse(text, path, &Registry)
}

/// The image recipe the lab names must install every package its variants
/// need (checked before anything boots; a recipe that cannot be read is
/// left for the image build to report).
pub fn check_image(lab: &Lab, images_dir: &Path) -> Result<(), LabError> {
    let recipe = lab.image_recipe(images_dir);
    let Ok((have, _)) = crate::image::Recipe::load(&recipe) else { return Ok(()) };
    let packages = packages(lab);
    let missing: Vec<&str> = packages.into_iter().filter(|p| !have.packages.iter().any(|h| h == p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let message = format!(
        "the image {} lacks packages the lab's overlay and filter need: {} (add them to its `packages`)",
        recipe.display(),
        missing.join(", ")
    );
    Err(lab.invalid(lab::Issue::new(vec![lab::Seg::Key("image")], message)))
}

/// The image packages the lab's overlays and filters need, each once.
pub fn packages(lab: &Lab) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    let chosen = lab.overlays().into_iter().map(|n| overlay::get(n) as &dyn Variant);
    for v in chosen.chain(lab.filters().into_iter().map(|n| filter::get(n) as &dyn Variant)) {
        for p in v.packages() {
            if !packages.contains(p) {
                packages.push(p);
            }
        }
    }
    packages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_defaults_are_registered_and_names_are_unique() {
        assert!(overlay::find(lab::DEFAULT_OVERLAY).is_some());
        assert!(filter::find(lab::DEFAULT_FILTER).is_some());
        assert!(overlay::find(overlay::REFERENCE).is_some());
        for kind in [Kind::Overlay, Kind::Filter] {
            let mut names: Vec<&str> = of(kind).iter().map(|v| v.name()).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), of(kind).len(), "a name is registered twice");
        }
    }
}

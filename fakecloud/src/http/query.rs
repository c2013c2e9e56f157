//! EC2's Query protocol on the way in: a form's flat `Name.N.Member` keys read back as lists, structures and
//! filters, and pages cut by `MaxResults` / `NextToken`.

use std::collections::BTreeMap;

use dovetail::aws::cloud::{CloudError, glob};

/// One request's parameters (`Action`, `Version` and the rest), from the form body or the query string.
#[derive(Debug, Clone, Default)]
pub struct Params(BTreeMap<String, String>);

/// An EC2 filter: a name and the values any of which may match (`*` and `?` are wildcards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

fn invalid(message: impl Into<String>) -> CloudError {
    CloudError::new("InvalidParameterValue", message)
}

impl Params {
    pub fn parse(form: &[u8]) -> Params {
        Params(
            form_urlencoded::parse(form)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A required parameter, or EC2's `MissingParameter`.
    pub fn required(&self, key: &str) -> Result<&str, CloudError> {
        self.get(key).ok_or_else(|| {
            CloudError::new(
                "MissingParameter",
                format!("The request must contain the parameter {key}"),
            )
        })
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, CloudError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| invalid(format!("Value ({v}) for parameter {key} is invalid.")))
            })
            .transpose()
    }

    pub fn float(&self, key: &str) -> Result<Option<f64>, CloudError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| invalid(format!("Value ({v}) for parameter {key} is invalid.")))
            })
            .transpose()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, CloudError> {
        self.get(key)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(invalid(format!(
                    "Value ({v}) for parameter {key} is invalid. Expected: 'true' or 'false'."
                ))),
            })
            .transpose()
    }

    /// The members of a list of scalars `prefix.1`, `prefix.2`, ... in index order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.indices(prefix)
            .into_iter()
            .filter_map(|i| self.get(&format!("{prefix}.{i}")).map(str::to_string))
            .collect()
    }

    /// A list of structures `prefix.N.*` as each one's own parameters, in index order.
    pub fn structs(&self, prefix: &str) -> Vec<Params> {
        self.indices(prefix)
            .into_iter()
            .map(|i| self.sub(&format!("{prefix}.{i}")))
            .collect()
    }

    /// The members under `prefix.` with the prefix taken off.
    pub fn sub(&self, prefix: &str) -> Params {
        let dotted = format!("{prefix}.");
        Params(
            self.0
                .range(dotted.clone()..)
                .take_while(|(k, _)| k.starts_with(&dotted))
                .map(|(k, v)| (k[dotted.len()..].to_string(), v.clone()))
                .collect(),
        )
    }

    /// Whether any member starts with `prefix.`.
    pub fn has(&self, prefix: &str) -> bool {
        self.get(prefix).is_some() || !self.sub(prefix).0.is_empty()
    }

    /// `Tag.N.Key` / `Tag.N.Value` as a map.
    pub fn tags(&self, prefix: &str) -> BTreeMap<String, String> {
        self.structs(prefix)
            .into_iter()
            .filter_map(|t| {
                Some((
                    t.get("Key")?.to_string(),
                    t.get("Value").unwrap_or_default().to_string(),
                ))
            })
            .collect()
    }

    /// `Filter.N.Name` with its `Filter.N.Value.M`.
    pub fn filters(&self) -> Result<Vec<Filter>, CloudError> {
        self.structs("Filter")
            .into_iter()
            .map(|f| {
                let name = f.required("Name")?.to_string();
                Ok(Filter {
                    values: f.list("Value"),
                    name,
                })
            })
            .collect()
    }

    /// The indices N of `prefix.N...`, sorted numerically.
    fn indices(&self, prefix: &str) -> Vec<u32> {
        let dotted = format!("{prefix}.");
        let mut out: Vec<u32> = self
            .0
            .range(dotted.clone()..)
            .take_while(|(k, _)| k.starts_with(&dotted))
            .filter_map(|(k, _)| k[dotted.len()..].split('.').next()?.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Filter {
    /// Whether any of `have` matches any of the filter's values.
    pub fn matches_any<'a>(&self, have: impl IntoIterator<Item = &'a str>) -> bool {
        let have: Vec<&str> = have.into_iter().collect();
        self.values
            .iter()
            .any(|want| have.iter().any(|h| wildcard(want, h)))
    }
}

/// EC2's filter wildcards: `*` any run, `?` any one character.
fn wildcard(pattern: &str, text: &str) -> bool {
    if !pattern.contains('?') {
        return glob(pattern, text);
    }
    fn go(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

/// What an item answers for each filter name a Describe call accepts; `tag:<key>` and `tag-key` come from
/// its tags.
pub trait Filterable {
    /// The item's values for a filter name; `None`: the call does not know that filter.
    fn values(&self, name: &str) -> Option<Vec<String>>;
    fn tags(&self) -> Option<&BTreeMap<String, String>> {
        None
    }
}

/// The items every filter matches; an unknown filter name is EC2's `InvalidParameterValue`.
pub fn apply<T: Filterable>(items: Vec<T>, filters: &[Filter]) -> Result<Vec<T>, CloudError> {
    let mut out = Vec::with_capacity(items.len());
    'item: for item in items {
        for f in filters {
            let values = match (f.name.strip_prefix("tag:"), f.name.as_str(), item.tags()) {
                (Some(key), _, Some(tags)) => tags.get(key).into_iter().cloned().collect(),
                (None, "tag-key", Some(tags)) => tags.keys().cloned().collect(),
                (None, "tag-value", Some(tags)) => tags.values().cloned().collect(),
                _ => item
                    .values(&f.name)
                    .ok_or_else(|| invalid(format!("The filter '{}' is invalid", f.name)))?,
            };
            if !f.matches_any(values.iter().map(String::as_str)) {
                continue 'item;
            }
        }
        out.push(item);
    }
    Ok(out)
}

/// One page of `items`: `MaxResults` (within `range`, else EC2's error) or `default` items from the offset
/// `NextToken` names, and the token of the next page if there is one.
pub fn page<T>(
    items: Vec<T>,
    params: &Params,
    range: (i64, i64),
    default: Option<usize>,
) -> Result<(Vec<T>, Option<String>), CloudError> {
    let size = match params.int("MaxResults")? {
        Some(m) if m < range.0 || m > range.1 => {
            return Err(invalid(format!(
                "Value ( {m} ) for parameter maxResults is invalid. Expecting a value between {} and {}.",
                range.0, range.1
            )));
        }
        Some(m) => Some(m as usize),
        None => default,
    };
    let start = match params.get("NextToken") {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix("page-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or_else(|| CloudError::new("InvalidNextToken", "The token is invalid."))?,
    };
    let Some(size) = size else {
        return Ok((items.into_iter().skip(start).collect(), None));
    };
    let total = items.len();
    let next = (start + size < total).then(|| format!("page-{}", start + size));
    Ok((items.into_iter().skip(start).take(size).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(form: &str) -> Params {
        Params::parse(form.as_bytes())
    }

    #[test]
    fn lists_and_structures_read_back_in_index_order() {
        let p = params(
            "InstanceId.2=i-b&InstanceId.10=i-c&InstanceId.1=i-a&Filter.1.Name=tag%3Ateam&Filter.1.Value.1=web&Filter.1.Value.2=api&Filter.2.Name=instance-state-name&Filter.2.Value.1=running",
        );
        assert_eq!(p.list("InstanceId"), vec!["i-a", "i-b", "i-c"]);
        let f = p.filters().unwrap();
        assert_eq!(f[0].name, "tag:team");
        assert_eq!(f[0].values, vec!["web", "api"]);
        assert_eq!(f[1].name, "instance-state-name");
    }

    #[test]
    fn a_filter_without_a_name_is_refused() {
        let p = params("Filter.1.Value.1=x");
        assert_eq!(p.filters().unwrap_err().code, "MissingParameter");
    }

    #[test]
    fn wildcards_match_like_ec2() {
        assert!(wildcard("c6i.*", "c6i.large"));
        assert!(wildcard("m5.?large", "m5.xlarge"));
        assert!(!wildcard("m5.?large", "m5.2xlarge2"));
        assert!(wildcard("*", ""));
    }

    #[test]
    fn pages_follow_their_tokens_and_refuse_bad_ones() {
        let items: Vec<u32> = (0..12).collect();
        let p = params("MaxResults=5");
        let (a, next) = page(items.clone(), &p, (5, 1000), None).unwrap();
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        let p = params(&format!("MaxResults=5&NextToken={}", next.unwrap()));
        let (b, next) = page(items.clone(), &p, (5, 1000), None).unwrap();
        assert_eq!(b, vec![5, 6, 7, 8, 9]);
        let p = params(&format!("MaxResults=5&NextToken={}", next.unwrap()));
        let (c, next) = page(items.clone(), &p, (5, 1000), None).unwrap();
        assert_eq!((c, next), (vec![10, 11], None));
        let err = page(items.clone(), &params("MaxResults=2"), (5, 1000), None).unwrap_err();
        assert_eq!(err.code, "InvalidParameterValue");
        let err = page(items, &params("NextToken=garbage"), (5, 1000), None).unwrap_err();
        assert_eq!(err.code, "InvalidNextToken");
    }
}

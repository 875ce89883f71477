//! Query strings read strictly: known parameters only, each at most once, percent-decoded.

use super::error::ApiError;

/// The values of `names` in `query` (`None` when the URI has none), in the order of `names`:
/// `None` for a parameter not given. An unknown parameter, one given twice, or bad
/// percent-encoding is a 400 naming it.
pub(crate) fn params<const N: usize>(
    query: Option<&str>,
    names: [&str; N],
) -> Result<[Option<String>; N], ApiError> {
    let mut given: [Option<String>; N] = std::array::from_fn(|_| None);
    for pair in query.unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).ok_or_else(|| {
            ApiError::bad_request("the query string is not valid percent-encoding")
        })?;
        let Some(slot) = names.iter().position(|known| *known == name) else {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {}: expected {}",
                quoted(&name),
                one_of(&names)
            )));
        };
        if given[slot].is_some() {
            return Err(ApiError::bad_request(format!(
                "query parameter {name} is given more than once"
            )));
        }
        let value = decode(value).ok_or_else(|| {
            ApiError::bad_request(format!("{name} is not valid percent-encoding"))
        })?;
        given[slot] = Some(value);
    }
    Ok(given)
}

/// `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [first @ .., last] => format!("{} or {last}", first.join(", ")),
    }
}

/// A query component, percent-decoded (`+` is a space, as in forms); `None` if it is not
/// valid percent-encoding or not UTF-8 once decoded.
fn decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.bytes();
    while let Some(byte) = rest.next() {
        bytes.push(match byte {
            b'+' => b' ',
            b'%' => {
                let high = char::from(rest.next()?).to_digit(16)?;
                let low = char::from(rest.next()?).to_digit(16)?;
                u8::try_from(high * 16 + low).ok()?
            }
            other => other,
        });
    }
    String::from_utf8(bytes).ok()
}

/// `name` in quotes, cut to a sane length, for an error message.
fn quoted(name: &str) -> String {
    let shown: String = name.chars().take(40).collect();
    let cut = if shown.len() < name.len() { "…" } else { "" };
    format!("{:?}", format!("{shown}{cut}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_parameters_are_read_once_each() {
        let given = params(Some("b=2&a=x%20y"), ["a", "b", "c"]).expect("valid");
        assert_eq!(given, [Some("x y".into()), Some("2".into()), None]);
        assert!(params(Some("a=1&a=2"), ["a"]).is_err());
        assert!(params(Some("d=1"), ["a", "b"]).is_err());
        assert!(params(Some("a=%zz"), ["a"]).is_err());
        assert_eq!(one_of(&["a", "b", "c"]), "a, b or c");
    }
}

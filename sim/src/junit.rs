//! JUnit XML for CI systems (GitHub Actions reporters, GitLab's `artifacts:reports:junit`): one test case
//! per scenario and seed, a failure carrying the expectation that failed or the snapshot's diff.

use quick_xml::Writer;
use quick_xml::events::{BytesCData, BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// One scenario at one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `<scenario file> seed <N>`.
    pub name: String,
    /// The scenario's file, as given.
    pub classname: String,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// (one-line message, the details) when it failed.
    pub failure: Option<(String, String)>,
}

/// The document: one `<testsuite>` named `suite` inside `<testsuites>`.
pub fn render(suite: &str, cases: &[Case]) -> String {
    let failures = cases.iter().filter(|c| c.failure.is_some()).count();
    let seconds: f64 = cases.iter().map(|c| c.seconds).sum();
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail; the results are dropped for that reason.
    let _ = w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    let counts = [
        ("tests", cases.len().to_string()),
        ("failures", failures.to_string()),
        ("errors", "0".to_string()),
        ("time", format!("{seconds:.3}")),
    ];
    let mut suites = BytesStart::new("testsuites");
    suites.extend_attributes(counts.iter().map(|(k, v)| (*k, v.as_str())));
    let _ = w.write_event(Event::Start(suites));
    let mut s = BytesStart::new("testsuite");
    s.push_attribute(("name", suite));
    s.extend_attributes(counts.iter().map(|(k, v)| (*k, v.as_str())));
    let _ = w.write_event(Event::Start(s));
    for case in cases {
        let mut c = BytesStart::new("testcase");
        c.push_attribute(("name", case.name.as_str()));
        c.push_attribute(("classname", case.classname.as_str()));
        c.push_attribute(("time", format!("{:.3}", case.seconds).as_str()));
        match &case.failure {
            None => {
                let _ = w.write_event(Event::Empty(c));
            }
            Some((message, details)) => {
                let _ = w.write_event(Event::Start(c));
                let mut f = BytesStart::new("failure");
                f.push_attribute(("message", message.as_str()));
                f.push_attribute(("type", "dovetail"));
                let _ = w.write_event(Event::Start(f));
                // CDATA cannot hold "]]>": split it across two sections where it occurs.
                let parts: Vec<&str> = details.split("]]>").collect();
                for (i, part) in parts.iter().enumerate() {
                    let text = if i + 1 < parts.len() {
                        format!("{part}]]")
                    } else if i > 0 {
                        format!(">{part}")
                    } else {
                        part.to_string()
                    };
                    let _ = w.write_event(Event::CData(BytesCData::new(text)));
                }
                let _ = w.write_event(Event::End(BytesEnd::new("failure")));
                let _ = w.write_event(Event::End(BytesEnd::new("testcase")));
            }
        }
    }
    let _ = w.write_event(Event::End(BytesEnd::new("testsuite")));
    let _ = w.write_event(Event::End(BytesEnd::new("testsuites")));
    let _ = w.write_event(Event::Text(BytesText::new("\n")));
    String::from_utf8_lossy(&w.into_inner()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_and_carry_their_details() {
        let xml = render(
            "dovetail sim",
            &[
                Case {
                    name: "a.yaml seed 1".into(),
                    classname: "a.yaml".into(),
                    seconds: 0.5,
                    failure: None,
                },
                Case {
                    name: "b.yaml seed 2".into(),
                    classname: "b.yaml".into(),
                    seconds: 1.25,
                    failure: Some((
                        "snapshot changed: launches 3 → 4".into(),
                        "-x <y> ]]> z\n+w".into(),
                    )),
                },
            ],
        );
        assert!(
            xml.contains(r#"<testsuites tests="2" failures="1" errors="0" time="1.750">"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<testcase name="a.yaml seed 1" classname="a.yaml" time="0.500"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<failure message="snapshot changed: launches 3 → 4" type="dovetail">"#),
            "{xml}"
        );
        assert!(
            xml.contains("<![CDATA[-x <y> ]]]]><![CDATA[> z\n+w]]>"),
            "{xml}"
        );
    }
}

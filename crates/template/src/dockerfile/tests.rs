use super::*;

fn p(text: &str) -> Dockerfile {
    parse(text, &[]).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn err(text: &str) -> DockerfileError {
    parse(text, &[]).expect_err(text)
}

fn args(d: &Dockerfile, i: usize) -> Vec<String> {
    d.steps[i].args.clone().unwrap_or_default()
}

/// The steps between the implicit first two (USER root, WORKDIR /) and the implicit last
/// ones, as `TYPE arg|arg`.
fn body(d: &Dockerfile) -> Vec<String> {
    d.steps
        .iter()
        .zip(&d.sources)
        .filter(|(_, src)| src.line.is_some())
        .map(|(s, _)| {
            format!(
                "{} {}",
                s.kind,
                s.args.clone().unwrap_or_default().join("|")
            )
        })
        .collect()
}

#[test]
fn a_typical_dockerfile() {
    let d = p(r#"# syntax=docker/dockerfile:1
# A comment
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1 \
    APP_HOME=/app
WORKDIR $APP_HOME
COPY requirements.txt .
RUN pip install -r requirements.txt \
    && rm -rf /tmp/*
COPY --chown=user:user --chmod=755 app.py run.sh ./
EXPOSE 8000
USER user
CMD ["python", "app.py"]
"#);
    assert_eq!(d.from, "python:3.12-slim");
    assert_eq!(d.from_line, 3);
    assert_eq!(
        body(&d),
        [
            "ENV PIP_NO_CACHE_DIR|1|APP_HOME|/app",
            "WORKDIR /app",
            "COPY requirements.txt|.||",
            "RUN pip install -r requirements.txt     && rm -rf /tmp/*",
            "COPY app.py|./|user:user|0755",
            "COPY run.sh|./|user:user|0755",
            "USER user",
        ]
    );
    // Docker's defaults first; USER and WORKDIR were set, so no E2B defaults at the end.
    assert_eq!(args(&d, 0), ["root"]);
    assert_eq!(d.steps[1].kind, "WORKDIR");
    assert_eq!(d.steps.len(), 9);
    assert_eq!(d.sources.len(), d.steps.len());
    assert_eq!(d.sources[5].line, Some(9));
    assert!(d.sources[5].instruction.starts_with("RUN pip install"));
    assert_eq!(d.start_cmd.as_deref(), Some("python app.py"));
    assert_eq!(d.ready_cmd, None);
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(d.warnings[0].starts_with("line 12: EXPOSE"));
}

#[test]
fn e2b_defaults_at_the_end() {
    let d = p("FROM e2bdev/base\nRUN echo hi\n");
    let kinds: Vec<String> = d
        .steps
        .iter()
        .map(|s| format!("{} {}", s.kind, s.args.clone().unwrap().join(" ")))
        .collect();
    assert_eq!(
        kinds,
        [
            "USER root",
            "WORKDIR /",
            "RUN echo hi",
            "USER user",
            "WORKDIR /home/user"
        ]
    );
    assert_eq!(d.sources[3].line, None);
}

#[test]
fn run_forms() {
    let d = p(r#"FROM debian:bookworm
RUN ["/bin/echo", "a b", "it's", "$HOME"]
RUN --mount=type=cache,target=/root/.cache apt-get update
run echo lower-case instruction
"#);
    assert_eq!(
        body(&d),
        [
            r#"RUN /bin/echo 'a b' 'it'"'"'s' '$HOME'"#,
            "RUN apt-get update",
            "RUN echo lower-case instruction",
        ]
    );
    assert!(d.warnings[0].contains("--mount is ignored"));
    let e = err("FROM x\nRUN\n");
    assert_eq!(e.line, 2);
    let e = err("FROM x\n\nRUN cat <<EOF > /f\nhello\nEOF\n");
    assert_eq!(e.line, 3);
    assert!(matches!(e.kind, DockerfileErrorKind::Unsupported(_)), "{e}");
    assert!(p("FROM x\nRUN cat <<< \"$v\"\n").steps.len() == 5);
    assert!(matches!(
        err("FROM x\nRUN --privileged true\n").kind,
        DockerfileErrorKind::Syntax(_)
    ));
}

#[test]
fn copy_and_add() {
    let d = p(r#"FROM x
COPY ["with space.txt", "/dst dir/"]
COPY a b c /d/
ADD --chmod=644 conf.ini /etc/
COPY --link src/ /src
"#);
    assert_eq!(
        body(&d),
        [
            "COPY with space.txt|/dst dir/||",
            "COPY a|/d/||",
            "COPY b|/d/||",
            "COPY c|/d/||",
            "COPY conf.ini|/etc/||0644",
            "COPY src/|/src||",
        ]
    );
    assert!(d.warnings.iter().any(|w| w.contains("--link is ignored")));
    for (text, line, unsupported) in [
        ("FROM x\nCOPY --from=build /a /b\n", 2, true),
        ("FROM x\nADD https://example.com/f.tgz /f\n", 2, true),
        ("FROM x\nADD git@github.com:a/b.git /b\n", 2, true),
        ("FROM x\nADD rootfs.tar.gz /\n", 2, true),
        ("FROM x\nCOPY <<EOF /f\nhi\nEOF\n", 2, true),
        ("FROM x\nCOPY /etc/passwd /p\n", 2, false),
        ("FROM x\nCOPY ../secret /s\n", 2, false),
        ("FROM x\nCOPY a b /not-a-dir\n", 2, false),
        ("FROM x\nCOPY a\n", 2, false),
        ("FROM x\n\nCOPY --chmod=u+x a /a\n", 3, false),
        ("FROM x\nCOPY --chown a /a\n", 2, false),
        ("FROM x\nCOPY --bogus=1 a /a\n", 2, false),
        ("FROM x\nCOPY --chown=a --chown=b a /a\n", 2, false),
    ] {
        let e = err(text);
        assert_eq!(e.line, line, "{text}: {e}");
        assert_eq!(
            matches!(e.kind, DockerfileErrorKind::Unsupported(_)),
            unsupported,
            "{text}: {e}"
        );
    }
    // A .gz that is not a tar archive is copied as it is (Docker does not unpack it).
    assert_eq!(
        body(&p("FROM x\nADD data.csv.gz /d/\n")),
        ["COPY data.csv.gz|/d/||"]
    );
}

#[test]
fn env_forms_and_substitution() {
    let d = p(r#"FROM x
ENV A=1 B="two words" C='$A' D=${A}x
ENV LEGACY value with  spaces
ENV PATH=/opt/bin:$PATH E=$A
WORKDIR ${B// /_}
USER ${NOBODY:-user}
"#);
    assert_eq!(
        body(&d),
        [
            // Values see the variables as they were before the instruction: D saw no A.
            // Unknown variables in ENV values are left for the build to expand from the
            // image's environment (as the SDK sends them).
            "ENV A|1|B|two words|C|$A|D|${A}x",
            "ENV LEGACY|value with  spaces",
            "ENV PATH|/opt/bin:$PATH|E|1",
            "WORKDIR two_words",
            // Elsewhere they are empty, as in Docker for a variable the image does not set.
            "USER user",
        ]
    );
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(d.warnings[0].starts_with("line 6: $NOBODY is not set"));
    assert_eq!(err("FROM x\nENV A\n").line, 2);
    assert_eq!(err("FROM x\nENV A=1 B\n").line, 2);
    assert_eq!(err("FROM x\nENV A=\"open\n").line, 2);
}

#[test]
fn args_defaults_build_args_and_scope() {
    let text = r#"ARG TAG=3.11
ARG UNUSED_GLOBAL
FROM python:${TAG}-slim AS app
ARG TAG
ARG VERSION=1.0
ARG NAME
COPY app-${VERSION}.whl /tmp/
RUN pip install /tmp/app-$VERSION.whl
ENV VERSION=override
RUN echo $VERSION
"#;
    let d = p(text);
    assert_eq!(d.from, "python:3.11-slim");
    assert_eq!(
        body(&d),
        [
            "COPY app-1.0.whl|/tmp/||",
            "RUN export TAG=3.11 VERSION=1.0; pip install /tmp/app-$VERSION.whl",
            "ENV VERSION|override",
            // The ENV of the same name wins over the ARG.
            "RUN export TAG=3.11; echo $VERSION",
        ]
    );
    let given = [
        ("TAG".to_string(), "3.12".to_string()),
        ("VERSION".to_string(), "2 beta".to_string()),
        ("NOPE".to_string(), "x".to_string()),
    ];
    let d = parse(text, &given).unwrap();
    assert_eq!(d.from, "python:3.12-slim");
    assert_eq!(body(&d)[0], "COPY app-2 beta.whl|/tmp/||");
    assert_eq!(
        body(&d)[1],
        "RUN export TAG=3.12 VERSION='2 beta'; pip install /tmp/app-$VERSION.whl"
    );
    assert!(d.warnings.iter().any(|w| w.contains("NOPE")));
    assert!(!d.warnings.iter().any(|w| w.contains("TAG")));
    // An ARG without a value is unset: FROM substitutes "" for it.
    assert_eq!(p("ARG V\nFROM img${V:-:latest}\n").from, "img:latest");
}

#[test]
fn start_and_ready_commands() {
    let start = |text: &str| p(&format!("FROM x\n{text}")).start_cmd;
    assert_eq!(start("CMD python app.py"), Some("python app.py".into()));
    assert_eq!(start(r#"CMD ["npm", "start"]"#), Some("npm start".into()));
    assert_eq!(
        start("ENTRYPOINT [\"/entry.sh\"]\nCMD [\"--port\", \"80 80\"]"),
        Some("/entry.sh --port '80 80'".into())
    );
    assert_eq!(
        start("ENTRYPOINT [\"tini\", \"--\"]\nCMD serve --fast"),
        Some("tini -- /bin/sh -c 'serve --fast'".into())
    );
    assert_eq!(
        start("ENTRYPOINT exec run.sh\nCMD ignored"),
        Some("exec run.sh".into())
    );
    assert_eq!(start("CMD []"), None);
    assert_eq!(start("CMD a\nCMD b"), Some("b".into()));

    let d = p("FROM x\nHEALTHCHECK --interval=5s CMD curl -f http://localhost:8000/ || exit 1\n");
    assert_eq!(
        d.ready_cmd.as_deref(),
        Some("curl -f http://localhost:8000/ || exit 1")
    );
    assert!(d.warnings[0].contains("--interval is ignored"));
    let d = p("FROM x\nHEALTHCHECK CMD [\"pg_isready\", \"-U\", \"a b\"]\n");
    assert_eq!(d.ready_cmd.as_deref(), Some("pg_isready -U 'a b'"));
    let d = p("FROM x\nHEALTHCHECK CMD true\nHEALTHCHECK NONE\n");
    assert_eq!(d.ready_cmd, None);
    assert_eq!(err("FROM x\nHEALTHCHECK sometimes\n").line, 2);
}

#[test]
fn from_rules() {
    assert!(matches!(
        err("RUN x\n").kind,
        DockerfileErrorKind::Syntax(_)
    ));
    assert_eq!(
        err("# only a comment\n\n").kind,
        DockerfileErrorKind::NoFrom
    );
    let e = err("FROM a AS build\nRUN make\nFROM b\nCOPY --from=build /x /x\n");
    assert_eq!(e.line, 3);
    assert!(matches!(e.kind, DockerfileErrorKind::Unsupported(_)));
    assert_eq!(err("FROM a b\n").line, 1);
    assert!(matches!(
        err("FROM scratch\n").kind,
        DockerfileErrorKind::Unsupported(_)
    ));
    let d = p("FROM --platform=linux/amd64 debian:bookworm\n");
    assert_eq!(d.from, "debian:bookworm");
    assert_eq!(d.warnings.len(), 1);
}

#[test]
fn ignored_and_unknown_instructions() {
    let d = p(r#"FROM x
LABEL a=b
VOLUME /data
STOPSIGNAL SIGTERM
SHELL ["/bin/zsh", "-c"]
ONBUILD RUN x
MAINTAINER someone
"#);
    assert_eq!(d.warnings.len(), 6, "{:?}", d.warnings);
    assert!(body(&d).is_empty());
    let e = err("FROM x\nRUN ok\nFETCH http://x\n");
    assert_eq!(e.line, 3);
    assert_eq!(
        e.kind,
        DockerfileErrorKind::UnknownInstruction("FETCH".into())
    );
    assert_eq!(
        e.to_string(),
        "Dockerfile line 3: unknown instruction FETCH"
    );
}

#[test]
fn continuations_comments_and_escape_directive() {
    let d = p("FROM x\nRUN a \\\n# a comment inside\n\n   && b \\  \n   && c\nRUN d\n");
    assert_eq!(body(&d), ["RUN a    && b    && c", "RUN d"]);
    assert_eq!(d.sources[3].line, Some(7));
    let d = p("# escape=`\nFROM x\nRUN a `\n  b\nCOPY c:\\dir\\f.txt /d/\n");
    assert_eq!(body(&d), ["RUN a   b", "COPY c:\\dir\\f.txt|/d/||"]);
    assert_eq!(err("# escape=x\nFROM x\n").line, 1);
}

#[test]
fn build_request_carries_everything() {
    let d = p("FROM base\nRUN true\nCMD sleep infinity\n");
    let r = d.build_request(true, true);
    assert_eq!(r.from_template.as_deref(), Some("base"));
    assert_eq!(r.from_image, None);
    assert_eq!(r.force, Some(true));
    assert_eq!(r.steps.as_ref().map(Vec::len), Some(5));
    assert_eq!(r.start_cmd.as_deref(), Some("sleep infinity"));
    let json = serde_json::to_value(d.build_request(false, false)).unwrap();
    assert_eq!(json["fromImage"], "base");
    assert_eq!(json["steps"][2]["type"], "RUN");
}

#[test]
fn helpers() {
    assert_eq!(shell_quote(""), "''");
    assert_eq!(shell_quote("a-b_c.d/e:f=g"), "a-b_c.d/e:f=g");
    assert_eq!(shell_quote("a b"), "'a b'");
    assert_eq!(
        parse_words(r#"A=1 B="x y" C='p q'  D=a\ b"#, '\\'),
        ["A=1", "B=\"x y\"", "C='p q'", "D=a\\ b"]
    );
    assert_eq!(
        syntax::extract_flags("--chown=\"u:g\" --link -- --weird /a"),
        (
            vec!["--chown=u:g".to_string(), "--link".to_string()],
            " --weird /a"
        )
    );
    assert!(is_heredoc("<<EOF") && is_heredoc("<<-'END'") && !is_heredoc("<<<x"));
}

"""The docs tell the truth: every config key, value, flag, subcommand, repository path, link and
environment variable that README.md and docs/*.md name exists in the code or the repository;
README's quickstart figures are what scripts/render_quickstart.py renders from the measured record;
headers cite nothing outside the repository."""
import importlib.util
import json
import re
import struct
from functools import lru_cache
from pathlib import Path

import pytest

from conftest import SHARED_DIR, SOURCE_DIR, make_tiny_model, run_lmtune

DOCS = [SOURCE_DIR / "README.md", *sorted((SOURCE_DIR / "docs").glob("*.md"))]
QUICKSTART_CONFIG = SOURCE_DIR / "configs" / "quickstart.json"

# Tools other than lmtune that the docs show with their own flags: flags after them are theirs.
OTHER_TOOLS = {
    "torchrun": "PyTorch's launcher (--nproc-per-node, --no-python)",
    "huggingface-cli": "the Hugging Face hub's downloader (--local-dir)",
    "perf": "Linux perf (perf report --no-children --sort)",
    "tensorboard": "TensorBoard's server (tensorboard --logdir)",
    "#SBATCH": "SLURM's job script directives (#SBATCH --nodes)",
}
# Scripts that pass their options on to an lmtune subcommand: their flags are that subcommand's.
SCRIPTS_FORWARDING = {
    "scripts/bench-vs-reference.sh": "bench",  # "[BENCH OPTIONS...]", given to lmtune bench
}
# Backticked dotted names that are not config keys although their first part is a section's name.
NOT_CONFIG_KEYS = {
    "model.vocab": "a field of tokenizer.json's model object (docs/tokenizers.md)",
    "model.merges": "a field of tokenizer.json's model object (docs/tokenizers.md)",
}
# `name.suffix` in backticks is a file, not a key, when the suffix is one of these.
FILE_SUFFIXES = {
    "json", "jsonl", "txt", "log", "md", "py", "sh", "cpp", "h", "yaml", "yml", "gguf",
    "safetensors",
    "model",  # tokenizer.model, SentencePiece's file
    "tokens", "mask",  # train.tokens, validation.mask: the token cache's files (docs/data.md)
}
# Documented values that `lmtune config` refuses on some machines by design.
VALUES_NEEDING_A_GPU = {
    ("train.precision", "fp16"): "fp16 is CUDA only; `lmtune config` refuses it without a GPU",
    ("run.device", "cuda"): "`lmtune config` refuses it where no GPU is visible",
}
# Values `lmtune config` accepts only together with other keys: those --set alongside.
VALUES_NEEDING_KEYS = {
    ("model.quantize", "int8"): ["lora.enabled=true"],
    ("model.quantize", "nf4"): ["lora.enabled=true"],
    ("model.double_quant", "true"): ["lora.enabled=true", "model.quantize=nf4"],
}
# Placeholders the docs write where a value goes.
PLACEHOLDER_VALUES = {"N", "f", "DIR", "VALUE", "..."}
# Repository folders whose paths the docs name.
REPO_DIRS = ("scripts", "configs", "docs", "assets", "tests", "src", "include", "third_party",
             "cmake")


# ---------------------------------------------------------------------------------------------
# Reading Markdown: fenced code blocks, and the prose with its inline code spans.

def split_markdown(text):
    """(code_blocks, prose): code_blocks as (language, [lines]); prose with the blocks blanked out
    and the HTML comments that start a line removed (not those inside code spans)."""
    blocks, prose, block = [], [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if block is None:
                block = (line[3:].strip(), [])
            else:
                blocks.append(block)
                block = None
            prose.append("")
        elif block is not None:
            block[1].append(line)
            prose.append("")
        else:
            prose.append(line)
    return blocks, re.sub(r"^<!--.*?-->", "", "\n".join(prose), flags=re.S | re.M)


def code_spans(prose):
    """The inline code spans of the prose, line breaks inside them as spaces, `\\|` (a table's
    escaped bar) as `|`."""
    return [re.sub(r"\s*\n\s*", " ", span).replace("\\|", "|")
            for span in re.findall(r"`([^`]+)`", prose)]


def logical_code_lines(lines):
    """A code block's lines with `\\` continuations joined; each with whether it continues the
    previous command (indented or a comment line), so it keeps that command's context."""
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    if current:
        joined.append(current)
    return [(line, line[:1] in (" ", "\t", "#")) for line in joined if line.strip()]


# ---------------------------------------------------------------------------------------------
# What the docs name.

DOTTED = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?::\s*(.*))?$")


def config_key_mentions(text):
    """(name, value or None) for every backticked `a.b` or `a.b: value`, every `--set a.b=value`
    and every `key: value` written without its section."""
    blocks, prose = split_markdown(text)
    mentions = []
    for span in code_spans(prose):
        match = DOTTED.match(span.strip())
        if match:
            mentions.append((match.group(1), match.group(2)))
        elif re.match(r"^[a-z_]+: ", span):
            for item in span.split(", "):
                name, _, value = item.partition(": ")
                mentions.append((name, value))
    for span in code_spans(prose) + [line for _, lines in blocks for line in lines]:
        for name, value in re.findall(r"--set[ =]([a-z_][\w.]*)=(\S+?)[:,;.]?(?=\s|$)", span):
            mentions.append((name, value))
    return mentions


def yaml_config_keys(text):
    """Dotted keys of the ```yaml blocks that are configs (top-level keys are sections)."""
    import yaml

    keys = []

    def walk(prefix, node):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            keys.append(prefix)

    for language, lines in split_markdown(text)[0]:
        if language in ("yaml", "yml"):
            tree = yaml.safe_load("\n".join(lines))
            if isinstance(tree, dict) and "space" in tree and "trials" in tree:
                # A sweep file (docs/sweeps.md): its searched keys and an inline base are config's.
                keys.extend(tree["space"])
                if isinstance(tree.get("base"), dict):
                    walk("", tree["base"])
            else:
                walk("", tree)
    return keys


def flag_mentions(text, subcommands):
    """(command, flag) for every `--flag`: command is an lmtune subcommand, "lmtune" (lmtune with
    no known subcommand), a script path, ("other", tool), or None where nothing says whose."""
    blocks, prose = split_markdown(text)
    mentions = []

    def scan(tokens, command):
        for i, token in enumerate(tokens):
            word = token.strip("`()[]:;,")
            if word == "lmtune" or word.endswith("/lmtune"):
                following = tokens[i + 1].strip("`()[]") if i + 1 < len(tokens) else ""
                command = following if following in subcommands else "lmtune"
            elif re.match(r"^scripts/[\w.-]+$", word):
                command = word
            elif word in OTHER_TOOLS:
                command = ("other", word)
            elif i == 0 and word in subcommands:
                command = word  # a span such as `generate --prompts-file`
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", token):
                mentions.append((command, flag))
        return command

    for _, lines in blocks:
        command = None
        for line, continues in logical_code_lines(lines):
            command = scan(line.split(), command if continues else None)
    for span in code_spans(prose):
        scan(span.split(), None)
    outside_spans = re.sub(r"`[^`]+`", "", prose)
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", outside_spans):
        mentions.append((None, flag))
    return mentions


def lmtune_subcommand_mentions(text):
    """Words written after `lmtune` in code, where a subcommand goes."""
    blocks, prose = split_markdown(text)
    code = code_spans(prose) + [line for _, lines in blocks for line in lines]
    return [word for piece in code
            for word in re.findall(r"(?:^|[\s/(])lmtune ([a-z][a-z-]*)(?![\w:])", piece)]


def repo_path_mentions(text):
    """Repository paths named anywhere in the text (scripts/..., docs/..., ...), and paths in
    ../shared."""
    pattern = r"(?<![\w./~-])((?:%s)/[\w./<>*-]*[\w>*/])" % "|".join(REPO_DIRS)
    paths = [p.rstrip(".") for p in re.findall(pattern, text)]
    shared = re.findall(r"\.\./shared/([\w./-]*[\w/])", text)
    return paths, shared


def link_mentions(text):
    """Relative Markdown link targets (path, anchor or None), outside code."""
    _, prose = split_markdown(text)
    links = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        links.append((path, anchor or None))
    return links


def env_var_mentions(text):
    return sorted(set(re.findall(r"\b(LMTUNE_[A-Z0-9_]+)\b", text)))


def heading_anchors(text):
    """GitHub's anchors of the headings of a Markdown text."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", split_markdown(text)[1], re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# ---------------------------------------------------------------------------------------------
# What the code and the repository hold.

@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    """A config of the fewest keys: a tiny GPT-2 with a 1024-token context (so any documented
    seq_len fits) and the quickstart task's data."""
    tmp = tmp_path_factory.mktemp("docs")
    model = make_tiny_model(tmp / "model", n_positions=1024)
    config = {"model": {"path": str(model)},
              "data": {"train": str(SOURCE_DIR / "assets" / "quickstart" / "train.jsonl"),
                       "validation": str(SOURCE_DIR / "assets" / "quickstart" / "validation.jsonl"),
                       "cache_dir": str(tmp / "cache")},
              "run": {"output_dir": str(tmp / "run")}}
    path = tmp / "small.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def resolved(small_config):
    """`lmtune config`'s resolved config of the small config."""
    result = run_lmtune("config", small_config)
    assert result.returncode == 0, f"lmtune config:\n{result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def config_keys(resolved):
    """Every dotted key of the resolved config, leaves and sections."""
    keys = set()

    def walk(prefix, node):
        keys.add(prefix)
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)

    walk("", resolved)
    keys.discard("")
    return frozenset(keys)


def lookup(resolved, key):
    node = resolved
    for part in key.split("."):
        node = node[part]
    return node


@lru_cache(maxsize=None)
def help_text(*command):
    result = run_lmtune(*command, "--help")
    assert result.returncode == 0, f"lmtune {' '.join(command)} --help:\n{result.stderr}"
    return result.stdout


@lru_cache(maxsize=None)
def subcommands():
    """The subcommands `lmtune --help` lists."""
    text = help_text()
    section = re.split(r"(?im)^\s*subcommands:\s*$", text)
    assert len(section) == 2, f"no SUBCOMMANDS section in lmtune --help:\n{text}"
    return frozenset(re.findall(r"(?m)^\s+([a-z][a-z-]*)\s", section[1]))


def nested_subcommands(command):
    """The subcommands `lmtune COMMAND --help` lists (`tokenizer` has `train` and `extend`)."""
    section = re.split(r"(?im)^\s*subcommands:\s*$", help_text(command))
    return re.findall(r"(?m)^\s+([a-z][a-z-]*)\s{2,}", section[1]) if len(section) == 2 else []


def help_flags(command):
    """The flags of `lmtune COMMAND --help`, and of its own subcommands' help."""
    args = () if command == "lmtune" else (command,)
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", help_text(*args)))
    for nested in nested_subcommands(command) if args else []:
        flags |= set(re.findall(r"--[a-z][a-z0-9-]*", help_text(command, nested)))
    return flags


@lru_cache(maxsize=None)
def all_lmtune_flags():
    flags = help_flags("lmtune")
    for command in subcommands():
        flags |= help_flags(command)
    return frozenset(flags)


@lru_cache(maxsize=None)
def cuda_visible():
    return "CUDA available: yes" in run_lmtune("--version").stdout


def rel(path):
    return str(Path(path).relative_to(SOURCE_DIR))


# ---------------------------------------------------------------------------------------------
# The checks, as functions of one document's text, so a test can show each of them failing.

def unknown_config_keys(doc_name, text, keys):
    sections = {key for key in keys if "." not in key}
    leaves = {key.rsplit(".", 1)[-1] for key in keys}
    problems = []
    for name, _ in config_key_mentions(text):
        if "." not in name:
            if name not in leaves:
                problems.append(f"{doc_name}: `{name}` is not the name of any config key")
            continue
        section, suffix = name.split(".", 1)[0], name.rsplit(".", 1)[-1]
        if suffix in FILE_SUFFIXES or name in NOT_CONFIG_KEYS:
            continue
        if section not in sections:
            problems.append(f"{doc_name}: `{name}`: there is no config section `{section}`")
        elif name not in keys:
            problems.append(f"{doc_name}: `{name}` is not a config key")
    for name in yaml_config_keys(text):
        if name not in keys:
            problems.append(f"{doc_name}: `{name}` (in a yaml example) is not a config key")
    return problems


def unknown_flags(doc_name, text, commands, flags_of, all_flags):
    problems = []
    for command, flag in flag_mentions(text, commands):
        if isinstance(command, tuple):
            continue  # another tool's flag (OTHER_TOOLS)
        if isinstance(command, str) and command.startswith("scripts/"):
            if command in SCRIPTS_FORWARDING:
                if flag not in flags_of(SCRIPTS_FORWARDING[command]):
                    problems.append(f"{doc_name}: {command} {flag}: lmtune "
                                    f"{SCRIPTS_FORWARDING[command]} has no such option")
            elif not (SOURCE_DIR / command).is_file():
                problems.append(f"{doc_name}: {command} does not exist")
            elif flag not in (SOURCE_DIR / command).read_text():
                problems.append(f"{doc_name}: {command} {flag}: the script takes no such option")
        elif command in commands:
            if flag not in flags_of(command):
                problems.append(f"{doc_name}: lmtune {command} {flag}: no such option in "
                                f"`lmtune {command} --help`")
        elif flag not in all_flags:
            problems.append(f"{doc_name}: {flag} is no option of any lmtune command")
    return problems


def missing_paths(doc_path, text):
    problems = []
    paths, shared = repo_path_mentions(text)
    for path in paths:
        pattern = re.sub(r"<[^>]*>", "*", path)
        found = (any(SOURCE_DIR.glob(pattern.rstrip("/"))) if "*" in pattern
                 else (SOURCE_DIR / path).exists())
        if not found:
            problems.append(f"{doc_path.name}: {path} does not exist in the repository")
    # The tests need ../shared: without it this reports every mention rather than check none.
    for path in shared:
        if not (SHARED_DIR / path).exists():
            problems.append(f"{doc_path.name}: ../shared/{path} does not exist")
    for path, anchor in link_mentions(text):
        target = (doc_path.parent / path) if path else doc_path
        if not target.exists():
            problems.append(f"{doc_path.name}: link to {path}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(
                target.read_text(encoding="utf-8")):
            problems.append(f"{doc_path.name}: link to {path}#{anchor}: no such heading")
    return problems


# ---------------------------------------------------------------------------------------------
# The docs as they are.

@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_config_key_a_doc_names_exists(doc, config_keys):
    assert unknown_config_keys(rel(doc), doc.read_text(encoding="utf-8"), config_keys) == []


@pytest.mark.slow
def test_every_value_the_docs_give_a_key_is_accepted_by_lmtune_config(small_config, resolved,
                                                                      config_keys):
    pairs = set()
    for doc in DOCS:
        for name, value in config_key_mentions(doc.read_text(encoding="utf-8")):
            if value is None or name not in config_keys or "." not in name:
                continue
            current = lookup(resolved, name)
            if isinstance(current, str) and (current.startswith("/") or "/" in value):
                continue  # a path: the docs' paths are examples
            for one in value.split("|"):
                one = one.strip()
                if one not in PLACEHOLDER_VALUES and not re.search(r"[{}\[\]<>]|^$", one):
                    pairs.add((name, one))
    assert pairs, "found no documented values: the parser is broken"
    refused = []
    for name, value in sorted(pairs):
        if (name, value) in VALUES_NEEDING_A_GPU and not cuda_visible():
            continue
        extra = [arg for other in VALUES_NEEDING_KEYS.get((name, value), [])
                 for arg in ("--set", other)]
        result = run_lmtune("config", small_config, "--set", f"{name}={value}", *extra)
        if result.returncode != 0:
            refused.append(f"{name}={value}: {result.stderr.strip()}")
    assert refused == []


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_flag_a_doc_names_exists_in_its_command_help(doc):
    assert unknown_flags(rel(doc), doc.read_text(encoding="utf-8"), subcommands(), help_flags,
                         all_lmtune_flags()) == []


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_lmtune_subcommand_a_doc_names_exists(doc):
    named = lmtune_subcommand_mentions(doc.read_text(encoding="utf-8"))
    assert sorted(set(named) - subcommands()) == []


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_path_and_link_a_doc_names_exists(doc):
    assert missing_paths(doc, doc.read_text(encoding="utf-8")) == []


def test_every_environment_variable_the_docs_name_is_read_by_the_code_or_scripts():
    code = "\n".join(path.read_text(errors="replace")
                     for folder in ("src", "include", "scripts", "tests")
                     for path in (SOURCE_DIR / folder).rglob("*")
                     if path.is_file() and path.suffix in (".cpp", ".h", ".sh", ".py", ".txt")
                     and path.name != "test_docs.py")
    code += (SOURCE_DIR / "tests" / "CMakeLists.txt").read_text()
    named = {var for doc in DOCS for var in env_var_mentions(doc.read_text(encoding="utf-8"))}
    assert named, "found no environment variables: the parser is broken"
    assert sorted(var for var in named if var not in code) == []


# ---------------------------------------------------------------------------------------------
# README's quickstart figures come from the measured record, and the record fits the repository.

def load_renderer():
    spec = importlib.util.spec_from_file_location(
        "render_quickstart", SOURCE_DIR / "scripts" / "render_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_quickstart_figures_are_the_rendering_of_the_record():
    renderer = load_renderer()
    readme = (SOURCE_DIR / "README.md").read_text(encoding="utf-8")
    record = json.loads((SOURCE_DIR / "docs" / "quickstart-measured.json").read_text())
    assert renderer.replace_block(readme, renderer.render(record)) == readme, (
        "README.md's quickstart figures differ from docs/quickstart-measured.json: run "
        "scripts/render_quickstart.py (or scripts/quickstart.sh --record to measure again)")


def test_the_quickstart_record_is_of_the_bundled_config_and_task():
    record = json.loads((SOURCE_DIR / "docs" / "quickstart-measured.json").read_text())
    config = json.loads(QUICKSTART_CONFIG.read_text())
    heldout = (SOURCE_DIR / "assets" / "quickstart" / "heldout.jsonl").read_text().splitlines()
    assert record["config"] == rel(QUICKSTART_CONFIG)
    assert record["steps"] == config["train"]["max_steps"], (
        "configs/quickstart.json changed since the figures were measured: run "
        "scripts/quickstart.sh --record")
    assert record["threads"] == config["run"]["threads"]
    threads = {1: "one", 2: "two", 4: "four", 8: "eight"}[config["run"]["threads"]]
    assert f"on {threads} CPU threads" in (SOURCE_DIR / "README.md").read_text(encoding="utf-8")
    assert record["heldout_total"] == sum(1 for line in heldout if line.strip())
    assert 0 <= record["heldout_correct_before"] <= record["heldout_total"]
    assert 0 <= record["heldout_correct_after"] <= record["heldout_total"]


def test_readme_gives_the_default_models_parameter_count():
    path = SOURCE_DIR / "assets" / "default-model" / "model.safetensors"
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    parameters = sum(_product(t["shape"]) for name, t in header.items() if name != "__metadata__")
    readme = (SOURCE_DIR / "README.md").read_text(encoding="utf-8")
    assert f"a {parameters / 1e6:.1f}M-" in readme, f"the default model has {parameters} parameters"


def test_the_python_packages_the_readme_names_are_the_ones_install_deps_installs():
    readme = (SOURCE_DIR / "README.md").read_text(encoding="utf-8")
    sentence = re.search(r"holding the `torch` wheel.*?\.", readme, re.S).group(0)
    named = set(re.findall(r"`([\w-]+)`", sentence))
    requirements = (SOURCE_DIR / "scripts" / "requirements.txt").read_text()
    pinned = set(re.findall(r"(?m)^([\w-]+)", requirements))
    assert named and named <= pinned


def _product(shape):
    result = 1
    for n in shape:
        result *= n
    return result


# ---------------------------------------------------------------------------------------------
# Numbers and outputs the docs state.

def test_the_cuda_test_count_in_benchmarks_is_what_the_cuda_label_holds():
    text = (SOURCE_DIR / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    match = re.search(r"The label now holds (\d+) GoogleTest cases .*? and (\d+) end-to-end tests",
                      text, re.S)
    assert match, "docs/benchmarks.md no longer states how many tests the cuda label holds"
    gtest_cases = sum(len(re.findall(r"(?m)^TEST(?:_F|_P)?\(", path.read_text()))
                      for path in (SOURCE_DIR / "tests" / "cuda").glob("test_*.cpp"))
    e2e_tests = sum(len(re.findall(r"(?m)^def test_", path.read_text()))
                    for path in (SOURCE_DIR / "tests" / "e2e" / "cuda").glob("test_*.py"))
    assert (int(match.group(1)), int(match.group(2))) == (gtest_cases, e2e_tests)
    for case in re.findall(r"`([A-Z][A-Za-z]+)`", text[match.start():match.end() + 200]):
        assert case in (SOURCE_DIR / "tests" / "cuda" / "test_cuda.cpp").read_text(), case


def documented_json_keys(doc, language="json"):
    blocks, _ = split_markdown((SOURCE_DIR / doc).read_text(encoding="utf-8"))
    return [set(json.loads("\n".join(lines))) for lang, lines in blocks if lang == language]


def test_prepare_prints_the_report_fields_docs_data_md_shows(tmp_path):
    (documented,) = documented_json_keys("docs/data.md")
    result = run_lmtune("prepare", QUICKSTART_CONFIG, "--set", f"data.cache_dir={tmp_path}/cache",
                        "--set", f"run.output_dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == documented
    assert Path(report["cache_dir"]).parent == tmp_path / "cache"


def test_eval_prints_the_fields_the_readme_names(tmp_path):
    readme = (SOURCE_DIR / "README.md").read_text(encoding="utf-8")
    documented = re.search(r"lmtune eval CONFIG .*?# \{([^}]*)\}", readme).group(1)
    model = SOURCE_DIR / "assets" / "default-model"
    result = run_lmtune("eval", QUICKSTART_CONFIG, "--model", model,
                        "--set", f"data.cache_dir={tmp_path}/cache",
                        "--set", f"run.output_dir={tmp_path}/run", "--set", "eval.max_batches=1")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == set(re.findall(r'"(\w+)"', documented))


# ---------------------------------------------------------------------------------------------
# Headers cite nothing outside the repository.

def header_citations(text):
    """What a header's comments cite that is not in the repository: paths leaving it (`../`, the
    workspace's absolute `/work/...`), Markdown files and repository paths that do not exist."""
    comments = "\n".join(re.findall(r"//(.*)", text))
    problems = re.findall(r"(?:\.\./|(?<![\w.~])/work/)[\w./-]*", comments)
    for name in re.findall(r"(?<![\w/.-])([\w./-]+\.md)\b", comments):
        if not ((SOURCE_DIR / name).exists() or (SOURCE_DIR / "docs" / name).exists()):
            problems.append(name)
    paths, _ = repo_path_mentions(comments)
    problems += [path for path in paths if not (SOURCE_DIR / path).exists()]
    return problems


def test_headers_cite_nothing_outside_the_repository():
    headers = [*(SOURCE_DIR / "include").rglob("*.h"), *(SOURCE_DIR / "src").rglob("*.h")]
    assert headers
    problems = {rel(h): header_citations(h.read_text()) for h in headers}
    assert {h: p for h, p in problems.items() if p} == {}


# ---------------------------------------------------------------------------------------------
# Each check catches what it is for: a doc naming something that does not exist fails.

BAD_DOC = """\
Set `train.learning_rate` (and `trian.lr: 3`) or `learning_rate: 1`, then run

```sh
lmtune train CONFIG --resume --no-such-flag
scripts/quickstart.sh --not-a-script-option
lmtune frobnicate CONFIG
```
```yaml
train: {lr: 1.0e-4, batch: 8}
```
See `scripts/no-such-script.sh`, [the data docs](data.md#no-such-heading) and `--bogus`.
"""


def test_the_checks_report_a_doc_that_names_what_does_not_exist():
    keys = {"train", "train.lr", "train.max_steps"}
    assert unknown_config_keys("bad.md", BAD_DOC, keys) == [
        "bad.md: `train.learning_rate` is not a config key",
        "bad.md: `trian.lr`: there is no config section `trian`",
        "bad.md: `learning_rate` is not the name of any config key",
        "bad.md: `train.batch` (in a yaml example) is not a config key",
    ]
    flags = {"train": {"--resume", "--set", "--help"}}
    assert unknown_flags("bad.md", BAD_DOC, {"train"}, lambda c: flags[c], {"--resume"}) == [
        "bad.md: lmtune train --no-such-flag: no such option in `lmtune train --help`",
        "bad.md: scripts/quickstart.sh --not-a-script-option: the script takes no such option",
        "bad.md: --bogus is no option of any lmtune command",
    ]
    assert lmtune_subcommand_mentions(BAD_DOC) == ["train", "frobnicate"]
    assert missing_paths(SOURCE_DIR / "docs" / "bad.md", BAD_DOC) == [
        "bad.md: scripts/no-such-script.sh does not exist in the repository",
        "bad.md: link to data.md#no-such-heading: no such heading",
    ]
    assert header_citations("// See ../shared/bench/x.py and DESIGN.md.\nint x;  // fine\n") == [
        "../shared/bench/x.py", "DESIGN.md"]

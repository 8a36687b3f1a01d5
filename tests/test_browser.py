"""The course as a learner meets it: JupyterLab in a real (headless) Chromium, every notebook run, one widget
of each moved by mouse, and what the browser shows checked (issue 19).

nbmake runs the kernels headless, so a widget that never renders in the front end ("Error displaying widget", a
version mismatch between the kernel's ipywidgets and JupyterLab's widget manager, a callback that raises inside
its Output area, a figure that never appears) passes it. This module starts ``jupyter lab`` the way the README's
Quick start does (in the repository root, so the installed ``jupyter-config`` opens notebook 00), on loopback, a
free port and a random token, drives Debian's ``chromium`` through ``chromedriver`` with Selenium (no browser is
downloaded at run time), and:

- checks that the start page opens the first notebook (00);
- for every ``notebooks/*.ipynb`` (a glob: new notebooks are picked up): opens it, answers JupyterLab's
  kernel dialog as a learner would, runs all cells (FAST preset), waits for the kernel to be idle, and fails on
  any error output, any traceback in an output area (a widget's Output included), any "Error displaying
  widget" or widget that failed to render;
- moves a control (slider by mouse drag, dropdown, text) of the notebook's last interactive widget (a control
  with an Output area) and checks that the Output area shows new text or a new image, without a traceback;
  then one step on and one back (arrow keys, or the next option) must draw exactly what the move drew: a
  figure drawn in part (two threads drawing one pyplot figure: kernel subshells, see ``course_lib.widgets``)
  fails there;
- checks the FAST budget (``NOTEBOOK_BUDGET_S``, 90 s) from Run All to an idle kernel: when this module can run,
  conftest.py has nbmake skip the notebooks it runs, so each notebook runs once per ``pytest``;
- saves a screenshot of that widget to ``browser-screenshots/<notebook>.png`` (git-ignored), and on failure
  the whole page, scrolled to the problem (``<notebook>_FAILED.png``), and the browser console
  (``<notebook>_console.log``).

Marker ``browser``: deselect with ``pytest -m "not browser"``. Without chromium, chromedriver or selenium the
tests are skipped with the reason; in CI (``CI`` set) they fail instead. ``COURSE_BROWSER_ROOT`` serves another
folder with a ``notebooks/`` inside (e.g. a scratch copy with a widget broken on purpose), and
``COURSE_BROWSER_SHOTS`` puts the screenshots elsewhere.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("COURSE_BROWSER_ROOT") or REPO).resolve()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHOTS = Path(os.environ.get("COURSE_BROWSER_SHOTS") or REPO / "browser-screenshots")
NOTEBOOK_TIMEOUT_S = float(os.environ.get("COURSE_BROWSER_TIMEOUT_S", "300"))  # run all, per notebook
NOTEBOOK_BUDGET_S = float(os.environ.get("NOTEBOOK_BUDGET_S", "90"))  # conftest.py's FAST-mode budget, same variable
WIDGET_TIMEOUT_S = 60.0  # one control moved → its Output redrawn
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")

pytestmark = pytest.mark.browser

CONTROLS = ".widget-slider .noUi-handle, .widget-dropdown select, .widget-text input, .widget-textarea textarea"


def _requirements():
    """(chromium, chromedriver, None) or (.., .., the reason the browser check cannot run here)."""
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    chromium, chromedriver = (p if p and Path(p).is_file() else None for p in (chromium, chromedriver))
    missing = []
    if not chromium:
        missing.append("chromium")
    if not chromedriver:
        missing.append("chromedriver (Debian: chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium")
    if not missing:
        return chromium, chromedriver, None
    return chromium, chromedriver, (
        f"browser check needs {', '.join(missing)}: `apt-get install chromium chromium-driver` and "
        "`pip install -r requirements.txt` (.ci/run does both), or deselect it with -m 'not browser'")


@pytest.fixture(scope="module")
def browser_paths():
    chromium, chromedriver, why_not = _requirements()
    if why_not:
        if IN_CI:
            pytest.fail(f"CI is set, so the browser check must run: {why_not}")
        pytest.skip(why_not)
    return chromium, chromedriver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, url: str, token: str, proc: subprocess.Popen, log: Path):
        self.url, self.token, self.proc, self.log = url, token, proc, log

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def lab(browser_paths, tmp_path_factory):
    """``jupyter lab`` in the served folder, as the README's Quick start runs it, on 127.0.0.1, a free port and
    a random token. Its user settings and workspaces live in a temporary folder: autosave off (running a
    notebook must not write outputs into the committed files), no news or update checks (no network); the
    course's own config (``default_url``, installed from ``jupyter-config/``) is untouched."""
    state = tmp_path_factory.mktemp("jupyterlab")
    settings = state / "settings"
    for plugin, values in {
        "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # conftest sets Agg for nbmake; a learner's kernel has the inline backend
    env["COURSE_FAST"] = "1"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: open files, run all, read cell models
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={state / 'workspaces'}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    log = state / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    deadline = time.monotonic() + 120
    while True:
        try:
            server.api("/api/status")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"jupyter lab did not start (exit {proc.poll()}):\n{server.log_tail()}")
            time.sleep(0.5)
    yield server
    try:
        for kernel in server.api("/api/kernels"):
            server.api(f"/api/kernels/{kernel['id']}", method="DELETE")
    except OSError:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def driver(browser_paths):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = browser_paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--lang=en-US", "--disable-background-networking"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(chromedriver))
    browser.set_script_timeout(120)
    yield browser
    browser.quit()


def _wait(what: str, condition, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@contextmanager
def _evidence(driver, lab, name: str):
    """On failure: the page's screenshot (and the failing output's, ``_FAILED_detail.png``) and the browser
    console, next to the widget screenshots."""
    driver.get_log("browser")  # drop what earlier tests left
    try:
        yield
    except BaseException as exc:
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot, console, wrote = SHOTS / f"{name}_FAILED.png", SHOTS / f"{name}_console.log", False
        try:
            focus = driver.execute_script("const f = window.__focus; f && f.scrollIntoView({block: 'center'}); return f")
            time.sleep(1)
            driver.save_screenshot(str(shot))
            entries = driver.get_log("browser")
            console.write_text("\n".join(f"{e['level']} {e['message']}" for e in entries) + "\n")
            wrote = True
            if focus is not None:  # the problem itself, close up (the page may have scrolled elsewhere)
                focus.screenshot(str(SHOTS / f"{name}_FAILED_detail.png"))
        except Exception as inner:  # the browser itself is gone: still report the original failure
            if not wrote:
                console.write_text(f"could not read the browser: {inner!r}\n")
        severe = [line for line in console.read_text().splitlines() if line.startswith("SEVERE")][:3]
        raise AssertionError(f"{exc}\n(screenshot {shot}, console {console}"
                             + "".join(f"\n  console: {line[:300]}" for line in severe)
                             + f"\njupyter lab log:\n{lab.log_tail(15)})") from exc


def _load_lab(driver, lab, path: str = "/"):
    """Open ``path`` with the token (``/`` is the start page; ``/lab`` opens no notebook) and wait until
    JupyterLab has restored its layout."""
    driver.get(f"{lab.url}{path}?token={lab.token}")
    _wait("JupyterLab to load", lambda: driver.execute_script(
        "return !!(window.jupyterapp && window.jupyterapp.shell && document.querySelector('#jp-main-dock-panel'))"), 120)
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; window.jupyterapp.restored.then(() => done(null));")


def _accept_dialogs(driver) -> list[str]:
    """Answer JupyterLab's dialogs as a learner would (the "Select Kernel" one: keep the default, Python 3)."""
    return driver.execute_script("""
        return [...document.querySelectorAll('.jp-Dialog')].map(d => {
            const title = (d.querySelector('.jp-Dialog-header')?.innerText || d.innerText || '').trim().split('\\n')[0];
            d.querySelector('.jp-Dialog-button.jp-mod-accept')?.click();
            return title; });""")


def _close_everything(driver):
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (async () => {
            const app = window.jupyterapp;
            for (const w of [...app.shell.widgets('main')]) {
                if (w.context) w.context.model.dirty = false;  // nothing is saved: close without asking
                w.dispose();
            }
            await app.serviceManager.sessions.shutdownAll();
            done(null);
        })().catch(e => done(String(e)));""")


# The kernel is idle when no request it is handling is busy. Its own status is not enough: with subshells
# (ipykernel 7) a widget callback and the messages it provokes run side by side, and an "idle" for one of them
# arrives while another still draws. So busy/idle status messages are counted per parent request.
_WATCH_KERNEL = """
    const kernel = window.__nb.sessionContext.session.kernel;
    window.__busy = new Set();
    kernel.iopubMessage.connect((_, msg) => {
        if (msg.header.msg_type !== 'status') return;
        const parent = msg.parent_header && msg.parent_header.msg_id;
        if (msg.content.execution_state === 'busy') window.__busy.add(parent);
        else if (msg.content.execution_state === 'idle') window.__busy.delete(parent);
    });"""
_IDLE = "(window.__nb.sessionContext.session?.kernel?.status === 'idle' && window.__busy.size === 0)"

_CELL_STATE = """
    const panel = window.__nb;
    const dead = panel.sessionContext.session?.kernel?.status === 'dead';
    const status = dead ? 'dead' : """ + _IDLE + """ ? 'idle' : 'busy';
    const cells = panel.content.widgets.filter(c => c.model.type === 'code');
    const running = cells.filter(c => (c.promptNode?.textContent || '').includes('*')).length;
    const executed = cells.filter(c => c.model.executionCount !== null).length;
    return {status, running, executed, code: cells.length};"""

_CHECK_OUTPUTS = """
    // Every problem a learner would see in the notebook's outputs: error outputs (the model), tracebacks in any
    // output area (a widget's Output included), widget views that failed or never rendered.
    const panel = window.__nb, problems = [], pending = [];
    const blame = node => { if (!window.__focus) window.__focus = node; };  // the page screenshot shows it
    panel.content.widgets.forEach((cell, i) => {
        if (cell.model.type !== 'code') return;
        const first = (cell.model.sharedModel.getSource().split('\\n')[0] || '').slice(0, 70);
        const where = `cell ${i} [${cell.model.executionCount ?? ' '}] (${first})`;
        const outputs = cell.model.outputs;
        for (let k = 0; k < outputs.length; k++) {
            const out = outputs.get(k);
            if (out.type === 'error') {
                const raw = out.toJSON();
                blame(cell.outputArea.widgets[k]?.node || cell.node);
                problems.push(`${where}: error output ${raw.ename}: ${raw.evalue}`);
            }
            const view = out.data['application/vnd.jupyter.widget-view+json'];
            if (!view) continue;
            const child = cell.outputArea.widgets[k]?.node;
            const text = child ? child.innerText : '';
            if (!child) pending.push(`${where}: widget output ${k} has no output node`);
            // the widget manager hides a view whose model the kernel closed (tqdm(leave=False) when done): fine
            else if (child.querySelector('.jp-OutputArea-output.lm-mod-hidden')) continue;
            else if (text.includes('Error displaying widget') || child.querySelector('.jupyter-widgets-error-widget'))
                blame(child.querySelector('.jupyter-widgets-error-widget') || child), problems.push(`${where}: widget ${view.model_id} failed to render: ` +
                    `${text.trim().slice(0, 200) || 'the error-widget icon (its JavaScript error is in the console log)'}`);
            else if (!child.querySelector('.jupyter-widgets'))
                pending.push(`${where}: widget ${view.model_id} not rendered (shown: ${JSON.stringify(text.slice(0, 120))})`);
        }
        cell.node.querySelectorAll('.jp-OutputArea-output img').forEach(img => {
            if (!img.complete) pending.push(`${where}: an image is still loading`);
            else if (!img.naturalWidth) blame(img), problems.push(`${where}: an image that does not display (broken data)`);
        });
        cell.node.querySelectorAll('.jp-OutputArea-output').forEach(o => {
            const text = o.innerText || '';
            if (text.includes('Traceback (most recent call last)')) {
                blame(o);
                const last = text.trim().split('\\n').slice(-1)[0];
                problems.push(`${where}: traceback in an output area: ${last}`);
            }
        });
    });
    return {problems: [...new Set(problems)], pending};"""


def _wait_idle(driver, timeout: float) -> dict:
    """All cells run (no ``[*]`` prompt) and the kernel idle, twice in a row one second apart."""
    calm, state, deadline = 0, None, time.monotonic() + timeout
    while calm < 2:
        if time.monotonic() > deadline:
            raise AssertionError(f"the notebook did not finish within {timeout:.0f} s: {state}")
        time.sleep(1)
        _accept_dialogs(driver)
        state = driver.execute_script(_CELL_STATE)
        if state["status"] == "dead":
            raise AssertionError(f"the kernel died (out of memory? a crash?): {state}")
        calm = calm + 1 if state["status"] == "idle" and state["running"] == 0 and state["executed"] else 0
    return state


def test_widget_messages_go_to_the_main_shell(lab):
    """jupyter-config/overrides.json, installed by requirements.txt, turns JupyterLab's comms over kernel subshells
    off: with them on, a widget callback runs in a second thread beside the previous one, and two threads drawing
    one figure leave it drawn in part."""
    plugin = lab.api("/lab/api/settings/@jupyterlab/apputils-extension:kernels-settings")
    # overrides.json replaces the schema's default; a user's own setting (none here) would win over it
    value = plugin["settings"].get("commsOverSubshells", plugin["schema"]["properties"]["commsOverSubshells"]["default"])
    assert value == "disabled", (
        f"commsOverSubshells is {value!r} in this JupyterLab, not 'disabled': reinstall the course's jupyter config "
        "(pip install -r requirements.txt; it puts overrides.json under share/jupyter/lab/settings)")


def test_start_page_opens_the_first_notebook(lab, driver):
    """`jupyter lab` in the repository root opens the course at notebook 00 (README, Quick start)."""
    if not NOTEBOOKS:
        pytest.fail(f"no notebooks under {ROOT / 'notebooks'}")
    first = f"notebooks/{NOTEBOOKS[0].name}"
    with _evidence(driver, lab, "start_page"):
        _load_lab(driver, lab)
        label = _wait(f"{first} to open", lambda: driver.execute_script("""
            const w = [...window.jupyterapp.shell.widgets('main')].find(w => w.context);
            return w && w.context.path;"""), 60)
        assert label == first, f"the start page opened {label!r}, not {first!r}"
        assert driver.current_url.split("?")[0].endswith(f"/lab/tree/{first}"), driver.current_url
        _accept_dialogs(driver)
        _close_everything(driver)


def _snapshot(driver, box) -> str:
    """What the learner sees in a widget's Output areas: their text and the bytes of their images."""
    return driver.execute_script("""
        const hash = s => { let h = 5381; for (let i = 0; i < s.length; i++) h = (h * 33 + s.charCodeAt(i)) | 0; return h; };
        return [...arguments[0].querySelectorAll('.widget-output')].map(o => o.innerText + '|' +
            [...o.querySelectorAll('img')].map(i => i.src.length + ':' + hash(i.src)).join(',')).join('||');""",
                                 box)


def _images(driver, box) -> list[str]:
    """The data URLs of the images in a widget's Output areas."""
    return driver.execute_script("return [...arguments[0].querySelectorAll('.widget-output img')].map(i => i.src)", box)


def _save_images(sources: list[str], stem: Path) -> list[str]:
    import base64

    SHOTS.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(sources):
        if src.startswith("data:image/png;base64,"):
            path = stem.with_name(f"{stem.name}_{i}.png")
            path.write_bytes(base64.b64decode(src.split(",", 1)[1]))
            paths.append(str(path))
    return paths


def _mark_children(driver, box):
    driver.execute_script("""arguments[0].querySelectorAll('.widget-output .jp-OutputArea-child')
        .forEach(c => c.dataset.browserTestOld = '1');""", box)


def _redrawn(driver, box) -> bool:
    """The Output areas were cleared and drawn again (the callback ran), and the kernel is idle."""
    return driver.execute_script("""
        const box = arguments[0], outs = [...box.querySelectorAll('.widget-output')];
        return """ + _IDLE + """ && !box.querySelector('[data-browser-test-old]') &&
            outs.some(o => o.querySelector('.jp-OutputArea-child')) &&
            [...box.querySelectorAll('img')].every(i => i.complete);""", box)


def _show(driver, element):
    """Scroll ``element`` to the top of the notebook and wait until its images are decoded and painted."""
    driver.execute_async_script("""
        const [el, done] = [arguments[0], arguments[arguments.length - 1]];
        el.scrollIntoView({block: 'start'});
        Promise.all([...el.querySelectorAll('img')].map(i => i.decode().catch(() => null)))
            .then(() => requestAnimationFrame(() => requestAnimationFrame(() => done(null))));""", element)
    time.sleep(0.5)


def _act(driver, box, action) -> tuple[str, bool]:
    """Do ``action`` (returns what it did) on a control of ``box``; wait until the box's Output is drawn again."""
    _mark_children(driver, box)
    what = action()
    try:
        _wait(f"the widget to redraw after {what}", lambda: _redrawn(driver, box), WIDGET_TIMEOUT_S)
    except AssertionError:
        return what, False
    return what, True


def _fail_on_widget_error(name: str, box, what: str):
    from selenium.webdriver.common.by import By

    text = box.text
    if ("Traceback (most recent call last)" in text or "Error displaying widget" in text
            or box.find_elements(By.CSS_SELECTOR, ".jupyter-widgets-error-widget")):
        raise AssertionError(f"{name}: after {what} the widget shows an error:\n" + "\n".join(text.strip().split("\n")[-8:]))
    broken = box.parent.execute_script(
        "return [...arguments[0].querySelectorAll('img')].filter(i => i.complete && !i.naturalWidth).length", box)
    assert not broken, f"{name}: after {what} the widget shows an image that does not display"


def _room(control) -> int:
    """+1 if the control can step up (next option, one slider step right), else -1."""
    from selenium.webdriver.support.ui import Select

    if control.tag_name.lower() == "select":
        menu = Select(control)
        values = [o.get_attribute("value") for o in menu.options]
        return 1 if values.index(menu.first_selected_option.get_attribute("value")) + 1 < len(values) else -1
    return -1 if float(control.get_attribute("aria-valuenow")) >= float(control.get_attribute("aria-valuemax")) else 1


def _step(control, delta: int) -> str:
    """One keyboard step of a slider (arrow key) or one option of a dropdown, ``delta`` ±1: the opposite step
    undoes it exactly."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    if control.tag_name.lower() == "select":
        menu = Select(control)
        values = [o.get_attribute("value") for o in menu.options]
        here = values.index(menu.first_selected_option.get_attribute("value"))
        menu.select_by_index(here + delta)
        return f"dropdown {_label(control)} → {values[here + delta]!r}"
    before = _readout(control)
    control.send_keys(Keys.ARROW_RIGHT if delta > 0 else Keys.ARROW_LEFT)
    return f"slider {_label(control)} {before} → {_readout(control)} (arrow key)"


def _readout(control) -> str:
    """A slider's value as the learner reads it (its readout), else the handle's aria value."""
    return control.parent.execute_script("""
        const r = arguments[0].closest('.widget-slider')?.querySelector('.widget-readout');
        return (r && r.textContent.trim()) || arguments[0].getAttribute('aria-valuenow');""", control)


def _label(control) -> str:
    return control.parent.execute_script("""
        const w = arguments[0].closest('.widget-inline-hbox');
        return ((w && w.querySelector('.widget-label')?.textContent) || '').trim();""", control) or "?"


def _move(driver, control) -> str:
    """Move one control as a learner would; returns what was done."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", control)
    time.sleep(0.3)
    tag = control.tag_name.lower()
    if tag == "select":
        menu = Select(control)
        current = [o.get_attribute("value") for o in menu.all_selected_options]
        options = [o.get_attribute("value") for o in menu.options]
        nxt = (options.index(current[0]) + 1) % len(options) if current else 0
        menu.select_by_index(nxt)
        return f"dropdown {_label(control)} → {options[nxt]!r}"
    if tag in ("input", "textarea"):
        control.send_keys(Keys.END, "x", Keys.ENTER)
        return "typed 'x' + Enter"
    # a noUiSlider handle: drag it a quarter of the track (left if it sits at its maximum), as with a mouse
    before, shown = control.get_attribute("aria-valuenow"), _readout(control)
    track = driver.execute_script("return arguments[0].closest('.noUi-base').getBoundingClientRect().width", control)
    at_max = float(before) >= float(control.get_attribute("aria-valuemax"))
    dx = max(20, int(track / 4)) * (-1 if at_max else 1)
    (ActionChains(driver).move_to_element(control).pause(0.2).click_and_hold().pause(0.2)
     .move_by_offset(dx // 2, 0).pause(0.2).move_by_offset(dx - dx // 2, 0).pause(0.2).release().perform())
    time.sleep(0.3)
    after = control.get_attribute("aria-valuenow")
    if after == before:  # the drag did not take: the keyboard does what a learner's arrow key does
        control.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)
        time.sleep(0.3)
        after = control.get_attribute("aria-valuenow")
        assert after != before, f"slider {_label(control)} did not move from {shown} by mouse or keyboard"
        return f"slider {_label(control)} {shown} → {_readout(control)} (mouse did not move it; arrow key)"
    return f"slider {_label(control)} {shown} → {_readout(control)} (mouse drag)"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_in_browser(lab, driver, notebook, request):
    from selenium.webdriver.common.by import By

    rel = f"notebooks/{notebook.name}"
    with _evidence(driver, lab, notebook.stem):
        if not driver.execute_script("return !!window.jupyterapp"):
            _load_lab(driver, lab, "/lab")
        _close_everything(driver)
        driver.execute_script("window.__focus = null")
        opened = driver.execute_async_script("""
            const [path, done] = [arguments[0], arguments[arguments.length - 1]];
            (async () => {
                const app = window.jupyterapp;
                const panel = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
                await panel.context.ready;
                window.__nb = panel;
                app.shell.activateById(panel.id);
                done(panel.context.path);
            })().catch(e => done('ERROR ' + e));""", rel)
        assert opened == rel, f"could not open {rel}: {opened}"
        dialogs = []
        _wait("the kernel", lambda: (dialogs.extend(_accept_dialogs(driver)) or driver.execute_script(
            "return window.__nb.sessionContext.session?.kernel?.status === 'idle'")), 120)
        driver.execute_script(_WATCH_KERNEL)
        start = time.monotonic()
        # Run > Run All Cells, aimed at this notebook (widgetId) whichever tab has the focus; not awaited: we poll
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells', {widgetId: window.__nb.id})")
        _wait("Run All Cells to start", lambda: (lambda st: st["running"] or st["executed"])(
            driver.execute_script(_CELL_STATE)), 30, every=0.2)
        state = _wait_idle(driver, NOTEBOOK_TIMEOUT_S)
        seconds = time.monotonic() - start
        request.node.user_properties.append(("seconds", round(seconds, 1)))
        print(f"\n{notebook.name}: ran in the browser in {seconds:.1f} s; dialogs answered: {dialogs or 'none'}")
        assert not any("kernel" in d.lower() for d in dialogs), (
            f"{notebook.name}: JupyterLab asked the learner to pick a kernel ({dialogs}); the notebook must name "
            "its kernelspec (tests/test_notebooks.py)")

        # errors and widgets that did not render; a widget view may still be drawing: give it a moment
        deadline = time.monotonic() + 30
        while True:
            checked = driver.execute_script(_CHECK_OUTPUTS)
            if checked["problems"] or not checked["pending"] or time.monotonic() > deadline:
                break
            time.sleep(1)
        problems = checked["problems"] + checked["pending"]
        assert not problems, f"{notebook.name}:\n" + "\n".join(problems)
        assert state["executed"] == state["code"], f"{notebook.name}: only {state['executed']} of {state['code']} cells ran"

        # the last interactive widget (a control next to an Output area): move its controls until one redraws it
        panel = driver.execute_script("return window.__nb.node")
        boxes = [b for b in panel.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output > .jupyter-widgets")
                 if b.find_elements(By.CSS_SELECTOR, ".widget-output") and b.find_elements(By.CSS_SELECTOR, CONTROLS)]
        assert boxes, f"{notebook.name}: no interactive widget (a slider, dropdown or text box with an Output area)"
        box = boxes[-1]
        driver.execute_script("window.__focus = arguments[0].querySelector('.widget-output') || arguments[0]", box)
        tried, moved = [], None
        for control in box.find_elements(By.CSS_SELECTOR, CONTROLS)[:3]:
            before = _snapshot(driver, box)
            what, redrawn = _act(driver, box, lambda: _move(driver, control))
            if not redrawn:
                tried.append(f"{what}: no redraw within {WIDGET_TIMEOUT_S:.0f} s")
                continue
            _fail_on_widget_error(notebook.name, box, what)
            after = _snapshot(driver, box)
            tried.append(f"{what}: {'output changed' if after != before else 'output unchanged'}")
            if after != before:
                moved = control, what, after, _images(driver, box)
                break
        assert moved, f"{notebook.name}: moving the widget's controls did not change what it shows: {tried}"
        print(f"{notebook.name}: widget: {'; '.join(tried)}")
        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = SHOTS / f"{notebook.stem}.png"
        _show(driver, box)
        box.screenshot(str(shot))  # what the learner sees after the move

        # The same control value must draw the same picture: one step on and back, then compare with the first
        # drawing. A figure drawn in part (two threads drawing one pyplot figure) or lost differs.
        control, what, after = moved[:3]
        room = _room(control) if control.tag_name.lower() not in ("input", "textarea") else 0  # text: no step back
        for delta in (room, -room) if room else ():
            step, redrawn = _act(driver, box, lambda: _step(control, delta))
            assert redrawn, f"{notebook.name}: no redraw within {WIDGET_TIMEOUT_S:.0f} s after {step}"
            _fail_on_widget_error(notebook.name, box, step)
        again = _snapshot(driver, box)
        if again != after:
            first_images, now_images = _save_images(moved[3], SHOTS / f"{notebook.stem}_first"), _save_images(
                _images(driver, box), SHOTS / f"{notebook.stem}_again")
            text_same = again.split("|")[0] == after.split("|")[0]
            raise AssertionError(
                f"{notebook.name}: after {what}, one step on and back, the widget draws something else for the same "
                f"value ({'same text, other image' if text_same else 'other text'}): the first drawing "
                f"{first_images or shot} against the drawing after the steps {now_images}; a figure drawn in part?")
        _close_everything(driver)
        # nbmake leaves notebooks to this test when it runs (conftest.py), so the FAST budget is checked here too
        assert not NOTEBOOK_BUDGET_S or seconds <= NOTEBOOK_BUDGET_S, (
            f"{notebook.name} ran for {seconds:.1f} s in the browser, over its FAST-mode budget of "
            f"{NOTEBOOK_BUDGET_S:.0f} s (README, Test everything); make it faster or raise NOTEBOOK_BUDGET_S deliberately")

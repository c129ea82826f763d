/**
 * Playwright configuration for jupyter-hpcllm's UI tests (Galata), after jupyterlab/extension-template's.
 *
 * - The browser is Debian's Chromium (/usr/bin/chromium, `apt-get install chromium`): nothing is downloaded
 *   from Playwright's CDN (install with PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1). Playwright passes --no-sandbox
 *   by default (chromiumSandbox: false), which Chromium needs when it runs as root.
 * - The Jupyter server is the project's .venv's (its bin/ first on PATH), on 127.0.0.1:8899 with a temporary
 *   root_dir (jupyter_server_test_config.py); it inherits the environment, HPCLLM_CONFIG included: the
 *   sidebar's server extension reaches the cluster that config names.
 * - Screenshots (on failure), traces and the HTML report go to test-results/ and playwright-report/,
 *   which git ignores. No videos.
 */
const path = require('path');
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

const PORT = 8899;
const URL = `http://127.0.0.1:${PORT}`;
const venvBin = path.resolve(__dirname, '..', '.venv', 'bin');

module.exports = {
  ...baseConfig,
  // One worker: one Jupyter server and one Slurm test cluster, on a 2-core machine.
  workers: 1,
  outputDir: 'test-results',
  reporter: [['list'], ['html', { open: 'never', outputFolder: 'playwright-report' }]],
  use: {
    ...baseConfig.use,
    baseURL: URL,
    headless: true,
    viewport: { width: 1280, height: 860 }, // room for the sidebar, a notebook and the status bar
    launchOptions: { executablePath: '/usr/bin/chromium' },
    screenshot: 'only-on-failure',
    trace: 'retain-on-failure',
    video: 'off'
  },
  webServer: {
    command: 'jlpm start',
    url: `${URL}/lab`,
    timeout: 120 * 1000,
    // A server already on the port is someone else's (or a stale one, with another HPCLLM_CONFIG): fail
    // rather than test it, unless asked to (a `jlpm start` of your own in another terminal).
    reuseExistingServer: process.env.UI_TESTS_REUSE_SERVER === '1',
    env: { ...process.env, PATH: `${venvBin}${path.delimiter}${process.env.PATH ?? ''}` }
  }
};

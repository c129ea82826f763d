/** What the UI tests share: opening the sidebar, and the README's screenshots. */
import * as fs from 'fs';
import * as path from 'path';

import { expect, test, type IJupyterLabPageFixture } from '@jupyterlab/galata';
import type { Locator } from '@playwright/test';

export const SIDEBAR = 'jp-hpcllm-sidebar';

/** Open the "HPC LLM" sidebar and wait for its profiles (its first read, over SSH). */
export async function openSidebar(page: IJupyterLabPageFixture): Promise<Locator> {
  await page.sidebar.openTab(SIDEBAR);
  const sidebar = page.locator(`#${SIDEBAR}`);
  await expect(sidebar).toBeVisible();
  await expect(sidebar.locator('select.jp-hpcllm-profile')).toBeVisible({ timeout: 30_000 });
  return sidebar;
}

/**
 * A screenshot of the whole page (or of one part of it), in the test's results; with HPCLLM_README_SCREENSHOTS=1 also in
 * docs/images/, where the README shows it (`HPCLLM_README_SCREENSHOTS=1 bash scripts/ui-test`).
 */
export async function saveScreenshot(page: IJupyterLabPageFixture, name: string, part?: Locator): Promise<void> {
  const file = test.info().outputPath(name);
  await (part ?? page).screenshot({ path: file });
  if (process.env.HPCLLM_README_SCREENSHOTS === '1') {
    fs.copyFileSync(file, path.resolve(__dirname, '..', '..', 'docs', 'images', name));
  }
}

/** Run `source` in the notebook's last cell if it is empty (running a cell adds one), else in a new one. */
export async function runInLastCell(page: IJupyterLabPageFixture, source: string): Promise<string> {
  const last = (await page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell').count()) - 1;
  let index = last;
  if ((await page.notebook.getCellTextInput(last)).trim() === '') {
    await page.notebook.setCell(last, 'code', source);
  } else {
    await page.notebook.addCell('code', source);
    index = last + 1;
  }
  await page.notebook.runCell(index);
  return ((await page.notebook.getCellTextOutput(index)) ?? []).join('');
}

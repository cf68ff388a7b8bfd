-- Lmod module for ksi: `module load ksi` puts ksi, kind, nerdctl, liqoctl and kubectl on PATH and sets the
-- site's defaults for ksi. Install it as <a directory on MODULEPATH>/ksi/<version>.lua (setup/README.md).

-- ===== Site settings: edit these ========================================================================
-- Where ksi is installed: a Python environment with bin/ksi (python3 -m venv DIR && DIR/bin/pip install ksi).
local ksi_prefix = "/opt/ksi/" .. myModuleVersion()
-- Where setup/install-tools.sh put kind, nerdctl (with containerd, rootlesskit, CNI plugins), liqoctl, kubectl.
local tools_prefix = "/usr/local"
-- Node-local parent of each user's state directory (KSI_STATE_DIR=<it>/ksi-<uid>). Leave "" for ksi's
-- default /tmp/ksi-<uid>; set "/var/tmp" when jobs get a private /tmp (job_container/tmpfs), and give the
-- epilog KSI_EPILOG_STATE_DIR=/var/tmp/ksi-%u to match.
local state_parent = ""
-- A local copy of Liqo's Helm chart, for nodes without internet access (KSI_LIQO_CHART); "" to fetch online.
local liqo_chart = ""
-- The kind node image (KSI_NODE_IMAGE), e.g. a copy in the site's registry pinned by digest; "" for ksi's.
local node_image = ""
-- Any other ksi setting (README.md, Settings), as NAME = "value"; e.g. KSI_CREATE_TIMEOUT = "900".
local extra = {
}
-- ========================================================================================================

whatis("Name: ksi")
whatis("Version: " .. myModuleVersion())
whatis("Description: a throw-away Kubernetes cluster (kind + Liqo) for the length of one Slurm job")
help([[
ksi gives a Slurm job its own Kubernetes cluster spanning its nodes:

  srun -N3 --ntasks-per-node=1 -K1 ksi run my-workload.sh "$PWD"

ksi doctor checks that a node can run it; ksi list and ksi cleanup show and remove leftover clusters.
This module puts ksi, kind, nerdctl, liqoctl and kubectl on PATH and sets the site's ksi defaults.
]])

conflict("ksi")

-- A module that loads but finds nothing is worse than one that says what to edit.
if mode() == "load" then
  if not isFile(pathJoin(ksi_prefix, "bin", "ksi")) then
    LmodError("ksi: there is no " .. pathJoin(ksi_prefix, "bin", "ksi") .. ": set ksi_prefix in " .. myFileName())
  end
  if not isFile(pathJoin(tools_prefix, "bin", "kind")) then
    LmodMessage("ksi: there is no " .. pathJoin(tools_prefix, "bin", "kind") .. ": install the tools with "
      .. "setup/install-tools.sh or set tools_prefix in " .. myFileName())
  end
end

prepend_path("PATH", pathJoin(tools_prefix, "bin"))
prepend_path("PATH", pathJoin(ksi_prefix, "bin"))
-- nerdctl looks for CNI plugins in /opt/cni/bin before /usr/local/libexec/cni: name the bundle's own.
setenv("CNI_PATH", pathJoin(tools_prefix, "libexec", "cni"))
-- kind's nerdctl provider (ksi passes it to kind itself too; this is for kind run by hand).
setenv("KIND_EXPERIMENTAL_PROVIDER", "nerdctl")

if state_parent ~= "" then
  local uid = capture("id -u"):gsub("%s+", "")
  setenv("KSI_STATE_DIR", pathJoin(state_parent, "ksi-" .. uid))
end
if liqo_chart ~= "" then
  setenv("KSI_LIQO_CHART", liqo_chart)
end
if node_image ~= "" then
  setenv("KSI_NODE_IMAGE", node_image)
end
for name, value in pairs(extra) do
  setenv(name, value)
end

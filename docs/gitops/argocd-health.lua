-- Argo CD health check for stockade.io/AgentRun (resource.customizations.health.stockade.io_AgentRun).
-- Tested by tests/unit/test_argo_health.py against the statuses the operator writes.
--
--   Healthy      phase Succeeded, or Ready=True for the current generation and no EgressResolved=False
--   Degraded     phase Failed, Quarantined or Expired, or Stalled=True (the spec cannot be used as is)
--   Progressing  anything else: no status yet, an older generation, the fence or the agent starting,
--               Queued (waiting for a budget or team quota; it starts by itself when capacity frees),
--               or EgressResolved=False (a granted host resolves to nothing, named in the message)
--
-- An unresolved host is Progressing, not Degraded: the fence is complete and the run heals by itself
-- once the name resolves (it is looked up again every few seconds), as when its DNS record is created
-- in the same sync; and not Healthy, which would hide a misspelt or private host for good.
--
-- Expired is Degraded, not Suspended: the run was stopped by its time limit before it finished, as a
-- Job past its activeDeadlineSeconds fails. Suspended would read as "paused, will resume"; it will not.
local hs = {}

local function condition(kind)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == kind then
        return c
      end
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Stockade operator"
  return hs
end

local phase = obj.status.phase
local ready = condition("Ready")
local stalled = condition("Stalled")

if phase == "Failed" or phase == "Quarantined" or phase == "Expired" then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. describe(ready, "see the AgentRun's status")
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Succeeded")
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the operator to act on generation %d", generation)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local egress = condition("EgressResolved")
if ready ~= nil and ready.status == "True" and egress ~= nil and egress.status == "False" then
  hs.status = "Progressing"
  hs.message = describe(egress, "EgressResolved=False")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, phase)
return hs

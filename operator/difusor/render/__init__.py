"""Pure renderers: the objects, configs and schemas that the operator derives from a spec."""

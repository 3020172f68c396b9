"""A lifecycle model of `pulumi up` / `destroy`: engine.py decides what the Pulumi engine
would do with each resource and runs the real rendered scripts in its order; world.py
holds the clouds and hosts those steps act on; hosts.py starts the throwaway machines."""

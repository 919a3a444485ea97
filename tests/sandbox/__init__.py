"""The sandbox's own tests (the local Pendo and Planhat stand-in), apart from the product's."""
